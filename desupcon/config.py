"""One config system for every run: typed frozen dataclasses, YAML, ``--set a.b=value``, validation, diff.

Every run is one config object stored inside its checkpoint and JSON log: ``RunConfig`` (teacher,
projection head and distilled students, flat fields) and ``desupcon.moco_config.MocoConfig``
(sections ``data``, ``train``, ``model``). Both are ``Config`` dataclasses, so both load from a
profile or from YAML, take the same overrides, validate the same way and give the same diff for
the stale-cache guard.

A field's check lives in its metadata (``checked(default, "> 0", lambda v: v > 0)``); a field
whose values come from a registry (architectures, datasets, augmentations, methods) names it with
``choices``, so each list of valid values has one source. A run's name is computed from its config
alone (``RunConfig.name``): the method's named hyperparameters as the write-ups spelled them, then
a short hash of every other field that differs from its default, so editing a profile never
renames a cached run, and a changed hyperparameter is a new run beside the old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

ROLES = ("teacher", "projection", "student")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
DEFAULT_SEED = 42


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field and a valid choice."""


def checked(default: Any, requirement: str = "", ok: Callable[[Any], bool] | None = None,
            choices: Callable[[], Any] | None = None, **kwargs) -> Any:
    """A dataclass field with its check: ``ok(value)`` must hold (else "must be ``requirement``"),
    or the value must be a key of the registry ``choices()`` returns."""
    return field(default=default, metadata={"requirement": requirement, "ok": ok, "choices": choices}, **kwargs)


def _choices_of_registry(name: str) -> Callable[[], list]:
    """The valid values of a field, read from the module that owns them (imported on demand)."""
    def choices():
        if name == "arch":
            from .models import ARCHS as registry
        elif name == "dataset":
            from .data import dataset_names

            return dataset_names()  # the built-ins and your own folders in $DESUPCON_DATA
        elif name == "augment":
            from .augment import PRESETS as registry
        else:
            from .registry import METHODS as registry
        return list(registry)
    return choices


_TYPE_WORDS = {bool: "True or False", int: "an int", float: "a finite number", str: "a string"}


class Config:
    """What every config dataclass shares: dict and YAML round trips, overrides, validation, diff."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config"):
        """The config stored as ``d`` (``to_dict``), nested sections and sub-configs included."""
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(d) - set(hints))
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s) {unknown}; valid fields: {list(hints)}")
        values = {}
        for key, value in d.items():
            values[key] = _from_plain(hints[key], value, f"{source}: '{key}'")
        return cls(**values)

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied and validated; unknown fields raise ``ConfigError``."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes).validate()

    def override(self, pairs) -> "Config":
        """Apply ``["alpha=2", "train.epochs=5", "teacher.epochs=3"]``, each typed by its field, then validate."""
        return self._apply(pairs).validate()

    def _apply(self, pairs) -> "Config":
        cfg = self
        for pair in pairs:
            path, sep, raw = pair.partition("=")
            if not sep or not path:
                raise ConfigError(f"override '{pair}': expected KEY=VALUE with KEY one of {self.keys()}")
            cfg = cfg._set(path.split("."), raw, pair)
        return cfg

    def _set(self, keys: list[str], raw: str, pair: str, prefix: str = ""):
        hints = typing.get_type_hints(type(self))
        key = keys[0]
        if key not in hints:
            extra = self._extra_override(key, raw, pair) if len(keys) == 1 else None
            if extra is not None:
                return extra
            raise ConfigError(f"override '{pair}': unknown key '{prefix}{key}'; valid keys: {self.keys(prefix)}")
        value = getattr(self, key)
        if len(keys) > 1:
            if not isinstance(value, Config):
                raise ConfigError(f"override '{pair}': '{prefix}{key}' has no sub-keys")
            return dataclasses.replace(self, **{key: value._set(keys[1:], raw, pair, f"{prefix}{key}.")})
        if _section_type(hints[key]) is not None:
            raise ConfigError(f"override '{pair}': '{key}' is a section; set one of its keys ('{key}.KEY=VALUE')")
        return dataclasses.replace(self, **{key: _parse(hints[key], raw, f"override '{pair}': '{prefix}{key}'")})

    def _extra_override(self, key: str, raw: str, pair: str):
        """Hook for keys that are not fields (e.g. a method's own hyperparameters); None = unknown."""
        return None

    @classmethod
    def keys(cls, prefix: str = "") -> list[str]:
        """Every settable key, sections spelled ``section.key``."""
        out = []
        for name, hint in typing.get_type_hints(cls).items():
            section = _section_type(hint)
            if section is not None and section is not cls:
                out += section.keys(f"{prefix}{name}.")
            elif section is None:
                out.append(f"{prefix}{name}")
        return out

    @classmethod
    def from_yaml(cls, path, overrides=()):
        """Read ``path`` (every key of every section present, none unknown), apply ``overrides``, validate."""
        raw = read_yaml(path)
        return cls._from_sections(raw, str(path))._apply(overrides).validate(source=str(path))

    @classmethod
    def _from_sections(cls, raw: dict, source: str, prefix: str = ""):
        hints = typing.get_type_hints(cls)
        what = "section" if not prefix else "key"
        unknown = sorted(set(raw) - set(hints))
        if unknown:
            raise ConfigError(f"{source}: unknown {what} '{prefix}{unknown[0]}'; valid {what}s: {list(hints)}")
        missing = [k for k in hints if k not in raw]
        if missing:
            raise ConfigError(f"{source}: missing {what} '{prefix}{missing[0]}'")
        values = {}
        for key, hint in hints.items():
            section = _section_type(hint)
            if section is not None:
                if not isinstance(raw[key], dict):
                    raise ConfigError(f"{source}: section '{key}' must be a mapping of keys, got {raw[key]!r}")
                values[key] = section._from_sections(raw[key], source, f"{prefix}{key}.")
            else:
                values[key] = _coerce(hint, raw[key], f"{source}: '{prefix}{key}'")
        return cls(**values)

    def validate(self, source: str | None = None, prefix: str = "", **context):
        """Check every field's type and range, then ``_check_combinations``; return ``self``.

        A failure raises ``ConfigError`` naming the field, e.g. ``config field 'lr' = -0.1: must be > 0``.
        """
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), typing.get_type_hints(type(self))[f.name]
            where = f"{prefix}{f.name}"
            if isinstance(value, Config):
                value.validate(source, f"{where}.")
                continue
            _check_type(hint, value, where, source)
            meta = f.metadata
            if meta.get("choices") is not None:
                choices = meta["choices"]()
                _require(value in choices, where, value, f"must be one of {choices}", source)
            elif meta.get("ok") is not None:
                _require(meta["ok"](value), where, value, f"must be {meta['requirement']}", source)
        self._check_combinations(source, **context)
        return self

    def _check_combinations(self, source: str | None = None, **context) -> None:
        """Checks across fields (overridden by configs that have some)."""

    def diff(self, stored: dict) -> dict[str, tuple]:
        """Fields whose ``stored`` value (a checkpoint's config) differs from this config's."""
        return config_diff(stored, self.to_dict())


def _section_type(hint):
    """The ``Config`` class a field holds (a section, or an optional sub-config), else None."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and issubclass(candidate, Config):
            return candidate
    return None


def _require(ok: bool, where: str, value: Any, requirement: str, source: str | None = None) -> None:
    if not ok:
        prefix = f"{source}: " if source else ""
        raise ConfigError(f"{prefix}config field '{where}' = {value!r}: {requirement}")


def _check_type(hint, value, where: str, source: str | None) -> None:
    origin = typing.get_origin(hint)
    if origin is tuple:
        elem = typing.get_args(hint)[0]
        ok = isinstance(value, tuple) and all(isinstance(v, elem) and not isinstance(v, bool) for v in value)
        _require(ok, where, value, f"must be a tuple of {elem.__name__}s", source)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        _require(ok, where, value, "must be a finite number", source)
    elif hint in _TYPE_WORDS:
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        _require(ok, where, value, f"must be {_TYPE_WORDS[hint]}", source)


def _parse(hint, raw: str, where: str):
    """An override string as the field's type."""
    if typing.get_origin(hint) is tuple:
        try:
            return tuple(int(s) for s in raw.split(",") if s)
        except ValueError:
            raise ConfigError(f"{where}: '{raw}' is not a comma-separated list of ints") from None
    return _coerce(hint, raw, where)


def _coerce(hint, value, where: str):
    """A YAML scalar or override string as ``hint`` (int, float, bool, str), or ``ConfigError``."""
    if hint not in _TYPE_WORDS:
        return value
    if isinstance(value, str) and hint is not str:
        if hint is bool:
            value = {"true": True, "false": False, "1": True, "0": False}.get(value.lower(), value)
        else:
            try:
                value = hint(value)
            except ValueError:
                pass
    if hint is float and type(value) is int:
        value = float(value)
    if type(value) is not hint:
        raise ConfigError(f"{where} must be {_TYPE_WORDS[hint]}, got {value!r}")
    return value


def _from_plain(hint, value, where: str):
    """A value of ``to_dict`` (JSON or a checkpoint) back as the field's type."""
    section = _section_type(hint)
    if section is not None:
        return None if value is None else section.from_dict(value, where)
    if typing.get_origin(hint) is tuple:
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def read_yaml(path) -> dict:
    """A YAML mapping; a missing file names the configs that exist beside it."""
    path = Path(path)
    if not path.is_file():
        folder = path.parent if path.parent.is_dir() else Path(__file__).resolve().parents[1] / "configs"
        known = sorted(str(p) for p in folder.glob("*.yaml"))
        raise ConfigError(f"config file {path} not found; configs in {folder}: {known}")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {raw!r}")
    return raw


def config_diff(stored: dict, requested: dict, prefix: str = "") -> dict[str, tuple]:
    """Fields whose values differ, as ``{"teacher.epochs": (stored, requested)}``."""
    diff = {}
    for key in sorted(set(stored) | set(requested)):
        a, b = stored.get(key, "<missing>"), requested.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diff.update(config_diff(a, b, f"{prefix}{key}."))
        elif _plain(a) != _plain(b):
            diff[f"{prefix}{key}"] = (a, b)
    return diff


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def short_hash(obj) -> str:
    """8 hex digits of the SHA-256 of ``obj`` as sorted JSON."""
    return hashlib.sha256(json.dumps(_plain_json(obj), sort_keys=True).encode()).hexdigest()[:8]


def _plain_json(obj):
    if isinstance(obj, dict):
        return {k: _plain_json(v) for k, v in obj.items()}
    return _plain(obj)


@dataclass(frozen=True)
class EvalConfig(Config):
    """Section ``eval``: the frozen-feature evaluation every run ends with (and MoCo-v3's ``evaluate-checkpoints``).

    knn_k, knn_temperature: neighbours and temperature of the weighted cosine k-NN (200, 0.1).
    probe_iterations: the most L-BFGS iterations of the linear probe on frozen features (full batch, each about
        one pass over the train features; it stops earlier once converged, see ``evaluate.linear_probe``).
    """

    knn_k: int = checked(200, ">= 1", lambda v: v >= 1)
    knn_temperature: float = checked(0.1, "in (0, 10]", lambda v: 0 < v <= 10)
    probe_iterations: int = checked(100, ">= 1", lambda v: v >= 1)



_non_negative = lambda v: v >= 0
_fraction = lambda v: 0 <= v <= 1
_below_one = lambda v: 0 <= v < 1


@dataclass(frozen=True)
class RunConfig(Config):
    """Everything that defines one distillation run (defaults: the write-ups' CIFAR-100 student recipe).

    Args:
        role: "teacher" (backbone + classifier, cross-entropy), "projection" (the teacher's 64-d
            cosine projection head trained with SupCon on the frozen teacher) or "student".
        method: a record of ``desupcon.registry.METHODS`` ("ce" for the teacher, "supcon" for its
            projection head, a student method for students).
        profile: the profile that produced this config ("smoke", "cifar100"); part of cache identity.
        dataset: a dataset of ``desupcon.data.dataset_names()``: a built-in, or a folder of ``$DESUPCON_DATA``
            holding your own images (read at 32x32, ``desupcon.data.OWN_DATA_SIZE``; README: Your own data).
        arch: a backbone of ``desupcon.models.ARCHS`` (CIFAR stem: 3x3 conv, no max-pool).
        width: channels of the first ResNet stage (64 = standard; smaller for smoke).
        proj_dim: dimension of the L2-normalised projection (64).
        epochs, batch_size: training length and global images per forward.
        accum_steps: forwards whose gradients are summed per optimiser step (1).
        optimizer, lr, weight_decay, sgd_momentum: optimiser ("adam" as in the write-ups).
        schedule, warmup_epochs: "constant" (the write-ups' sweeps: no schedule is stated) or "cosine"
            (annealing to 0 after a linear warmup: the bank ablation, ``registry.BANK_ABLATION_RECIPE``).
        seeds: RNG seeds, one run each; results report mean and std over seeds.
        temperature: tau of the contrastive losses.
        alpha, beta, adaptive_beta: LW-SupCRD pull weight, push weight and adaptive beta.
        adaptive_beta_source: the probability q_i in LW-SupCRD's ``beta / (q_i + 0.5)``: "teacher" (the
            teacher's p_i[y_i], as SPEC writes the formula) or "student" (the student's own classifier
            probability, which rises during training as the write-up's curriculum claims).
        positives: LW-SupCRD's positives: "class" (every same-label teacher key) or "instance" (only the
            same image's teacher key, as the write-up's "127 in-batch negatives" suggests).
        hybrid_lambda: weight of SupCon in ``hybrid`` (lambda*supcon + (1-lambda)*lw_supcrd).
        kd_temperature, kd_weight: Hinton KD temperature and weight (loss = (1-w) CE + w KD).
        bank_k: memory-bank keys sampled per step (0 = no bank); the bank has one slot per image.
        bank_momentum: momentum of the memory-bank update.
        bank_positives: same-label bank entries count as LW-SupCRD positives, a labelled variant (False =
            every bank entry is a push-weighted negative: the write-up's "4,096 negatives").
        augment: augmentation preset of the training views (``desupcon.augment.PRESETS``);
            "" = the method's default (``registry.Method.augment``).
        knn_k: neighbours of the weighted k-NN evaluation.
        probe_iterations: the most L-BFGS iterations of the linear probe (``EvalConfig``).
        compile: wrap the student in ``torch.compile`` (CUDA only; off by default).
        params: hyperparameters a method declares itself (``registry.Method.params``), as
            ``((name, value), ...)``; set them like fields (``--set margin=0.3``).
        teacher: config of the teacher run this run builds on (projection and distilled students).
    """

    role: str = checked("student", f"one of {list(ROLES)}", lambda v: v in ROLES)
    method: str = checked("undistilled", choices=_choices_of_registry("method"))
    profile: str = "cifar100"
    dataset: str = checked("cifar100", choices=_choices_of_registry("dataset"))
    arch: str = checked("resnet18", choices=_choices_of_registry("arch"))
    width: int = checked(64, ">= 4", lambda v: v >= 4)
    proj_dim: int = checked(64, ">= 2", lambda v: v >= 2)
    epochs: int = checked(50, ">= 1", lambda v: v >= 1)
    batch_size: int = checked(128, ">= 2 (contrastive losses need pairs)", lambda v: v >= 2)
    accum_steps: int = checked(1, ">= 1 (1 = no gradient accumulation)", lambda v: v >= 1)
    optimizer: str = checked("adam", f"one of {list(OPTIMIZERS)}", lambda v: v in OPTIMIZERS)
    lr: float = checked(1e-3, "in (0, 10] (the write-ups use 1e-3 with Adam)", lambda v: 0 < v <= 10)
    weight_decay: float = checked(0.0, "in [0, 1]", _fraction)
    sgd_momentum: float = checked(0.9, "in [0, 1)", _below_one)
    schedule: str = checked("constant", f"one of {list(SCHEDULES)}", lambda v: v in SCHEDULES)
    warmup_epochs: int = checked(0, ">= 0", _non_negative)
    seeds: tuple[int, ...] = (DEFAULT_SEED,)
    temperature: float = checked(0.07, "in (0, 10] (the write-ups use 0.07)", lambda v: 0 < v <= 10)
    alpha: float = checked(1.0, "in (0, 100] (the loss is divided by alpha)", lambda v: 0 < v <= 100)
    beta: float = checked(10.0, "in [0, 100]", lambda v: 0 <= v <= 100)
    adaptive_beta: bool = True
    adaptive_beta_source: str = checked("teacher", "one of ['teacher', 'student']", lambda v: v in ("teacher", "student"))
    positives: str = checked("class", "one of ['class', 'instance']", lambda v: v in ("class", "instance"))
    hybrid_lambda: float = checked(0.5, "in [0, 1]", _fraction)
    kd_temperature: float = checked(4.0, "in (0, 100]", lambda v: 0 < v <= 100)
    kd_weight: float = checked(0.9, "in [0, 1]", _fraction)
    bank_k: int = checked(0, ">= 0 (0 = no memory bank)", _non_negative)
    bank_momentum: float = checked(0.5, "in [0, 1)", _below_one)
    bank_positives: bool = False
    augment: str = ""
    knn_k: int = checked(200, ">= 1", lambda v: v >= 1)
    probe_iterations: int = checked(100, ">= 1", lambda v: v >= 1)
    compile: bool = False
    params: tuple = ()
    teacher: Optional["RunConfig"] = None

    @property
    def spec(self):
        """This run's record in the method registry."""
        from .registry import method_of
        return method_of(self)

    @property
    def seed(self) -> int:
        return self.seeds[0]

    @property
    def views_preset(self) -> str:
        """The augmentation preset of the training views: ``augment``, or the method's default."""
        return self.augment or self.spec.augment

    def param(self, name: str):
        """A hyperparameter the method declares itself (its default where the config does not set it)."""
        return dict(self.params).get(name, self.spec.params[name].default)

    @property
    def reference_name(self) -> str:
        """The name as the write-ups spelled it, e.g. ``student_alpha_1.0_beta_10.0_temp_0.07_resnet18_cifar100``."""
        return self.spec.reference_name(self)

    @property
    def name(self) -> str:
        """``reference_name``, then ``_<hash>`` of every other field that differs from its default
        (none for the write-ups' CIFAR-100 recipe); the seeds are not part of it (``run_name``)."""
        differing = self.unnamed_changes()
        return self.reference_name + (f"_{short_hash(differing)}" if differing else "")

    def unnamed_changes(self) -> dict:
        """The fields ``reference_name`` leaves out whose values differ from the method's defaults."""
        defaults = self.spec.defaults_for(self)
        named = self.spec.named_fields(self) | {"seeds", "teacher", "params"}
        value = lambda name: self.views_preset if name == "augment" else getattr(self, name)
        changes = {f.name: value(f.name) for f in dataclasses.fields(self)
                   if f.name not in named and value(f.name) != defaults[f.name]}
        changes.update({k: v for k, v in self.params if k not in self.spec.hyperparameters})
        teacher = self.teacher
        if teacher is not None and (teacher.unnamed_changes() or teacher.seed != DEFAULT_SEED):
            changes["teacher"] = teacher.run_name(teacher.seed)
        return changes

    @property
    def uses_teacher(self) -> bool:
        return self.role == "projection" or self.spec.needs_teacher

    def for_seed(self, seed: int) -> "RunConfig":
        """The single-seed config of one run (what its checkpoint stores)."""
        return dataclasses.replace(self, seeds=(seed,))

    def run_name(self, seed: int) -> str:
        """File stem of one seed's run: the plain name for ``DEFAULT_SEED`` (the write-ups' 42,
        so their file names are kept), ``<name>_seed<s>`` for any other seed."""
        return self.name if seed == DEFAULT_SEED else f"{self.name}_seed{seed}"

    @property
    def recipe(self):
        """What the trainer core reads (``desupcon.engine.Recipe``): a checkpoint every epoch, no snapshots."""
        from .engine import Recipe

        return Recipe(epochs=self.epochs, batch_size=self.batch_size, accum_steps=self.accum_steps, seed=self.seed,
                      optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                      sgd_momentum=self.sgd_momentum, schedule=self.schedule, warmup_epochs=self.warmup_epochs,
                      amp=True, checkpoint_every=1, snapshots=False)

    @property
    def evaluation(self) -> EvalConfig:
        return EvalConfig(knn_k=self.knn_k, probe_iterations=self.probe_iterations)

    image_size = None  # evaluated at the dataset's own resolution

    @property
    def results_group(self) -> str:
        """The comprehensive-results file this run is recorded in (``comprehensive_results_<group>.json``)."""
        return f"{self.arch}_{self.dataset}"

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RunConfig":
        d = dict(d)
        d.setdefault("seeds", (DEFAULT_SEED,))
        return super().from_dict(d, source)

    def _extra_override(self, key: str, raw: str, pair: str):
        spec = self.spec
        if key not in spec.params:
            return None
        value = _coerce(type(spec.params[key].default), raw, f"override '{pair}': '{key}'")
        return dataclasses.replace(self, params=tuple(sorted({**dict(self.params), key: value}.items())))

    def _check_combinations(self, source: str | None = None, num_train: int | None = None,
                            world_size: int = 1) -> None:
        """Seeds, the method's own checks, the teacher, and the batch against the data and world size."""
        check = lambda ok, where, value, requirement: _require(ok, where, value, requirement, source)
        check(len(self.seeds) >= 1, "seeds", self.seeds, "must be a non-empty tuple of ints")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "must not repeat a seed")
        check(self.warmup_epochs < self.epochs, "warmup_epochs", self.warmup_epochs, "must be in [0, epochs)")
        if self.augment:
            _choice = _choices_of_registry("augment")()
            check(self.augment in _choice, "augment", self.augment, f"must be one of {_choice} (or '' for the "
                                                                     f"method's default)")
        from .registry import METHODS
        spec = self.spec
        check(spec.role == self.role, "method", self.method,
              f"a {self.role} run uses method " + " or ".join(f"'{n}'" for n, m in METHODS.items() if m.role == self.role))
        unknown = sorted(set(dict(self.params)) - set(spec.params))
        check(not unknown, "params", self.params, f"{unknown} are not hyperparameters of method '{self.method}' "
                                                  f"(it declares {sorted(spec.params)})")
        for name, value in self.params:
            p = spec.params[name]
            check(p.ok(value), name, value, f"must be {p.requirement}")
        if self.bank_k:
            users = [n for n, m in METHODS.items() if m.uses_bank]
            check(spec.uses_bank, "bank_k", self.bank_k,
                  f"a memory bank is used only by {', '.join(users)} students; set bank_k=0")
        readers = [n for n, m in METHODS.items() if "positives" in m.hyperparameters]
        check(not self.bank_positives or (self.bank_k and spec.name in readers), "bank_positives", True,
              f"is a variant of the LW-SupCRD bank ({', '.join(readers)} with bank_k > 0); set bank_positives=False")
        for name, default in (("positives", "class"), ("adaptive_beta_source", "teacher")):
            check(getattr(self, name) == default or name in spec.hyperparameters, name, getattr(self, name),
                  f"is read only by {', '.join(readers)} students; keep '{default}' for method '{self.method}'")
        if self.uses_teacher:
            check(self.teacher is not None, "teacher", None,
                  f"a {self.role} run with method '{self.method}' needs a teacher config")
        if self.teacher is not None:
            self.teacher.validate(source, "teacher.")
            check(self.teacher.dataset == self.dataset, "teacher.dataset", self.teacher.dataset,
                  f"must match the run's dataset '{self.dataset}'")
        check(world_size >= 1 and self.batch_size % world_size == 0, "batch_size", self.batch_size,
              f"must be divisible by the world size {world_size}")
        if num_train is not None:
            check(self.batch_size * self.accum_steps <= num_train, "batch_size", self.batch_size,
                  f"x accum_steps {self.accum_steps} exceeds the {num_train} training images")
            check(self.bank_k + self.batch_size <= num_train, "bank_k", self.bank_k,
                  f"bank_k + batch_size must be <= the {num_train} training images (one bank slot per image)")


def validate(cfg: Config, num_train: Optional[int] = None, world_size: int = 1) -> Config:
    """Check types, ranges and combinations of ``cfg`` before any work starts; return it unchanged.

    ``num_train`` (training-set size) enables the checks of batch and bank size against the data;
    ``world_size`` checks that the global batch divides over the processes.
    """
    return cfg.validate(num_train=num_train, world_size=world_size)
