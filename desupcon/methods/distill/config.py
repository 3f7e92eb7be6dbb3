"""``RunConfig``: everything that defines one distillation run (teacher, projection head, students).

A run's name is computed from its config alone (``RunConfig.name``): the method's named
hyperparameters as the write-ups spelled them, then a short hash of every other field that differs
from its default, so editing a profile never renames a cached run, and a changed hyperparameter is
a new run beside the old one. Fields whose values come from a registry (architectures, datasets,
augmentations, methods) read it, so each list of valid values has one source.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from desupcon.core.config import (ACCUM_STEPS, BATCH, EPOCHS, SEED, TYPE_WORDS, bounded, checked, coerce_value,
                                  require_field, short_hash, shown)
from desupcon.images.augment import PRESETS
from desupcon.images.datasets import dataset_names
from desupcon.engine.evaluate import EvalConfig
from desupcon.engine.recipe import Recipe
from desupcon.engine.task import TaskConfig
from desupcon.methods.distill.registry import METHODS, Method, method_of
from desupcon.nn.models import ARCHS

ROLES = ("teacher", "projection", "student")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
DEFAULT_SEED = 42

_non_negative = lambda v: v >= 0
_fraction = lambda v: 0 <= v <= 1
_below_one = lambda v: 0 <= v < 1


@dataclass(frozen=True)
class RunConfig(TaskConfig):
    """Everything that defines one distillation run (defaults: the write-ups' CIFAR-100 student recipe).

    Its task is "distill" (``desupcon.methods.distill.task.DistillationTask``) for every method.

    Args:
        role: "teacher" (backbone + classifier, cross-entropy), "projection" (the teacher's 64-d
            cosine projection head trained with SupCon on the frozen teacher) or "student".
        method: a record of ``desupcon.methods.distill.registry.METHODS`` ("ce" for the teacher, "supcon" for its
            projection head, a student method for students).
        profile: the profile that produced this config ("smoke", "cifar100"); part of cache identity.
        dataset: a dataset of ``desupcon.images.datasets.dataset_names()``: a built-in, or a folder of ``$DESUPCON_DATA``
            holding your own images, or the absolute path of such a folder (read at 32x32,
            ``desupcon.images.datasets.OWN_DATA_SIZE``; README: Your own data). Run names and results groups
            spell it as ``dataset_title``. Overriding it (``--set dataset=...``) sets the whole teacher chain's.
        arch: a backbone of ``desupcon.nn.models.ARCHS`` (CIFAR stem: 3x3 conv, no max-pool).
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
            teacher's p_i[y_i], our reading of the write-up's formula: docs/design.md#adaptive-beta) or
            "student" (the student's own classifier probability, which rises during training as the
            write-up's curriculum claims).
        positives: LW-SupCRD's positives: "class" (every same-label teacher key) or "instance" (only the
            same image's teacher key, as the write-up's "127 in-batch negatives" suggests).
        positive_terms: LW-SupCRD's terms: "each" (one log-ratio per positive, averaged) or "pooled" (one
            log-ratio of the pooled positives per anchor, the write-ups' one-line formula read literally).
        hybrid_lambda: weight of SupCon in ``hybrid`` (lambda*supcon + (1-lambda)*lw_supcrd).
        kd_temperature, kd_weight: Hinton KD temperature and weight (loss = (1-w) CE + w KD).
        bank_k: memory-bank keys sampled per step (0 = no bank); the bank has one slot per image.
        bank_momentum: momentum of the memory-bank update.
        bank_positives: same-label bank entries count as LW-SupCRD positives, a labelled variant (False =
            every bank entry is a push-weighted negative: the write-up's "4,096 negatives").
        bank_literal: the write-ups' bank as written: ``memory[i] = 0.5 memory_old[i] + 0.5 feature_new[i]``
            without renormalising, and ``randperm(N)[:k]`` sampling that may draw the step's own images
            (False = renormalised rows, never the step's own images) (run name ``_banklit``).
        augment: augmentation preset of the training views (``desupcon.images.augment.PRESETS``);
            "" = the method's default (``registry.Method.augment``).
        knn_k: neighbours of the weighted k-NN evaluation.
        probe_iterations: the most L-BFGS iterations of the linear probe (``EvalConfig``).
        compile: wrap the student in ``torch.compile`` (CUDA only; off by default).
        params: hyperparameters a method declares itself (``registry.Method.params``), as
            ``((name, value), ...)``; set them like fields (``--set margin=0.3``).
        teacher: config of the teacher run this run builds on (projection and distilled students).
    """

    role: str = checked("student", f"one of {list(ROLES)}", lambda v: v in ROLES)
    method: str = checked("undistilled", choices=lambda: list(METHODS))
    profile: str = "cifar100"
    dataset: str = checked("cifar100", "(the built-ins, then the folders of $DESUPCON_DATA), or the absolute path of "
                                       "a folder of images (README: Your own data)", choices=dataset_names,
                           ok=lambda v: Path(v).is_absolute() and Path(v).is_dir())
    arch: str = checked("resnet18", choices=lambda: list(ARCHS))
    width: int = checked(64, ">= 4", lambda v: v >= 4)
    proj_dim: int = checked(64, ">= 2", lambda v: v >= 2)
    epochs: int = bounded(50, EPOCHS)
    batch_size: int = bounded(128, BATCH)
    accum_steps: int = bounded(1, ACCUM_STEPS)
    optimizer: str = checked("adam", f"one of {list(OPTIMIZERS)}", lambda v: v in OPTIMIZERS)
    lr: float = checked(1e-3, "in (0, 10] (the write-ups use 1e-3 with Adam)", lambda v: 0 < v <= 10)
    weight_decay: float = checked(0.0, "in [0, 1]", _fraction)
    sgd_momentum: float = checked(0.9, "in [0, 1)", _below_one)
    schedule: str = checked("constant", f"one of {list(SCHEDULES)}", lambda v: v in SCHEDULES)
    warmup_epochs: int = checked(0, ">= 0", _non_negative)
    seeds: tuple[int, ...] = bounded((DEFAULT_SEED,), SEED)
    temperature: float = checked(0.07, "in (0, 10] (the write-ups use 0.07)", lambda v: 0 < v <= 10)
    alpha: float = checked(1.0, "in (0, 100] (the loss is divided by alpha)", lambda v: 0 < v <= 100)
    beta: float = checked(10.0, "in [0, 100]", lambda v: 0 <= v <= 100)
    adaptive_beta: bool = True
    adaptive_beta_source: str = checked("teacher", "one of ['teacher', 'student']", lambda v: v in ("teacher", "student"))
    positives: str = checked("class", "one of ['class', 'instance']", lambda v: v in ("class", "instance"))
    positive_terms: str = checked("each", "one of ['each', 'pooled']", lambda v: v in ("each", "pooled"))
    hybrid_lambda: float = checked(0.5, "in [0, 1]", _fraction)
    kd_temperature: float = checked(4.0, "in (0, 100]", lambda v: 0 < v <= 100)
    kd_weight: float = checked(0.9, "in [0, 1]", _fraction)
    bank_k: int = checked(0, ">= 0 (0 = no memory bank)", _non_negative)
    bank_momentum: float = checked(0.5, "in [0, 1)", _below_one)
    bank_positives: bool = False
    bank_literal: bool = False
    augment: str = ""
    knn_k: int = checked(200, ">= 1", lambda v: v >= 1)
    probe_iterations: int = checked(100, ">= 1", lambda v: v >= 1)
    compile: bool = False
    params: tuple = ()
    teacher: Optional["RunConfig"] = None

    task = "distill"  # every distillation run is one task (``desupcon.methods.distill.task``)

    @property
    def spec(self) -> Method:
        """This run's record in the method registry."""
        return method_of(self)

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

    def upstream(self) -> tuple["RunConfig", ...]:
        """The teacher run this run builds on (trained first), if any."""
        return () if self.teacher is None else (self.teacher,)

    def with_batch(self, batch: int) -> "RunConfig":
        return self.replace(batch_size=batch)

    @property
    def head_is_trained(self) -> bool:
        """Projection runs and contrastive students train their projection head, so their metrics and
        figures live in its space; cross-entropy-only runs (teacher, undistilled, KD) use their backbone
        features instead."""
        return self.role == "projection" or self.spec.trains_head

    @property
    def reports_head(self) -> bool:
        """The teacher and its projection run report their classifier; students the linear probe."""
        return self.role in ("teacher", "projection")

    @property
    def label(self) -> str:
        """The method's short label with its bank and recipe, e.g. "CRD + bank 4096 (ablation)"."""
        return self.spec.short_label(self)

    @property
    def caption(self) -> str:
        return f"{self.dataset_title} test split ({self.profile} profile, seed {self.seed})"

    def for_seed(self, seed: int) -> "RunConfig":
        """The single-seed config of one run (what its checkpoint stores)."""
        return dataclasses.replace(self, seeds=(seed,))

    def run_name(self, seed: int) -> str:
        """File stem of one seed's run: the plain name for ``DEFAULT_SEED`` (the write-ups' 42,
        so their file names are kept), ``<name>_seed<s>`` for any other seed."""
        return self.name if seed == DEFAULT_SEED else f"{self.name}_seed{seed}"

    @property
    def recipe(self) -> Recipe:
        """What the trainer core reads: a checkpoint every epoch, no snapshots."""
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
        return f"{self.arch}_{self.dataset_title}"

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RunConfig":
        d = dict(d)
        d.setdefault("seeds", (DEFAULT_SEED,))
        return super().from_dict(d, source)

    def _set(self, keys: list[str], raw: str, pair: str, prefix: str = ""):
        """A dataset set at the top applies to the teacher chain too: a student is distilled on its own data."""
        cfg = super()._set(keys, raw, pair, prefix)
        if keys == ["dataset"] and cfg.teacher is not None:
            cfg = dataclasses.replace(cfg, teacher=cfg.teacher._set(keys, raw, pair, f"{prefix}teacher."))
        return cfg

    @property
    def dataset_title(self) -> str:
        """The dataset as run names spell it: its name, or the folder's name for an absolute path."""
        return Path(self.dataset).name

    def extra_override_keys(self) -> dict[str, tuple]:
        """The method's own hyperparameters (``Method.params``), as ``override_keys`` gives fields."""
        return {k: (next(w for w, t in TYPE_WORDS.items() if t is type(p.default)), p.requirement, None)
                for k, p in self.spec.params.items()}

    def _extra_override(self, key: str, raw: str, pair: str):
        spec = self.spec
        if key not in spec.params:
            return None
        param = spec.params[key]
        value = coerce_value(type(param.default), raw, f"override {shown(pair)}: '{key}'", param.requirement)
        return dataclasses.replace(self, params=tuple(sorted({**dict(self.params), key: value}.items())))

    def _check_combinations(self, source: str | None = None, num_train: int | None = None,
                            world_size: int = 1) -> None:
        """Seeds, the method's own checks, the teacher, and the batch against the data and world size."""
        check = lambda ok, where, value, requirement: require_field(ok, where, value, requirement, source)
        check(len(self.seeds) >= 1, "seeds", self.seeds, "must be a non-empty tuple of ints")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "must not repeat a seed")
        check(self.warmup_epochs < self.epochs, "warmup_epochs", self.warmup_epochs, "must be in [0, epochs)")
        if self.augment:
            _choice = list(PRESETS)
            check(self.augment in _choice, "augment", self.augment, f"must be one of {_choice} (or '' for the "
                                                                     f"method's default)")
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
        check(not self.bank_literal or self.bank_k, "bank_literal", True,
              "is a reading of the memory bank, which this run does not use (bank_k=0); set bank_k > 0 or bank_literal=False")
        for name, default in (("positives", "class"), ("positive_terms", "each"), ("adaptive_beta_source", "teacher")):
            check(getattr(self, name) == default or name in spec.hyperparameters, name, getattr(self, name),
                  f"is read only by {', '.join(readers)} students; keep '{default}' for method '{self.method}'")
        if self.uses_teacher:
            check(self.teacher is not None, "teacher", None,
                  f"a {self.role} run with method '{self.method}' needs a teacher config")
        if self.teacher is not None:  # validated as a field (``Config.validate``)
            check(self.teacher.dataset == self.dataset, "teacher.dataset", self.teacher.dataset,
                  f"must match the run's dataset '{self.dataset}': set dataset= alone, which sets the teacher "
                  f"chain's too")
        check(self.batch_size % world_size == 0, "batch_size", self.batch_size,
              f"must be divisible by the world size {world_size}")
        if num_train is not None:
            check(self.batch_size * self.accum_steps <= num_train, "batch_size", self.batch_size,
                  f"x accum_steps {self.accum_steps} exceeds the {num_train} training images")
            check(self.bank_k + self.batch_size <= num_train, "bank_k", self.bank_k,
                  f"bank_k + batch_size must be <= the {num_train} training images (one bank slot per image)")
