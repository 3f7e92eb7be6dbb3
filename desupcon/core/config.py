"""One config system for every run: typed frozen dataclasses, YAML, ``--set a.b=value``, validation, diff.

Every run is one config object stored inside its checkpoint and JSON log (the distillation
``RunConfig``, flat fields; the self-supervised ``SSLConfig``, sections ``data``, ``train``, ``model``,
``eval``). Both are ``Config`` dataclasses, so both load from a profile or from YAML, take the same
overrides, validate the same way and give the same diff for the stale-cache guard. This module
knows none of them.

A field's check lives in its metadata (``checked(default, "> 0", lambda v: v > 0)``), or
``choices``: a function returning the valid values (a registry's keys), read when validating. An int
field with a range names one of the shared ``Range``s below (``bounded(20, EPOCHS)``), so every kind
of run bounds its epochs, batch, seeds and image side alike, and the message names the range and why.

YAML files are read by ``StrictLoader``: plain values only (no anchors or aliases, no duplicate keys,
no tags beyond YAML's own), each refusal one ``ConfigError`` line naming the file, line and column.
Every value a message shows goes through ``shown`` (bounded length), so no input can make an error
message huge.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from desupcon.core.errors import ConfigError
from desupcon.core.paths import REPOSITORY


class _Shown(reprlib.Repr):
    """``reprlib.Repr`` whose ints never exceed ``maxlong`` digits (nor the interpreter's digit limit)."""

    def repr_int(self, x, level):
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than int -> str converts
            return f"<an int of about {x.bit_length() * math.log10(2):.0f} digits>"


_SHOWN = _Shown()
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = 60
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 6
_SHOWN.maxlevel = 2
SHOWN_CHARACTERS = 120  # the most characters of a value a message shows


def shown(value: Any) -> str:
    """``repr(value)`` for a message: at most 6 items per container, 2 levels deep and ``SHOWN_CHARACTERS`` in all."""
    return _clip(_SHOWN.repr(value), SHOWN_CHARACTERS)


@dataclass(frozen=True)
class Range:
    """The valid values of an int field: ``low <= value <= high``; ``why`` says where the bounds come from."""

    low: int
    high: int
    why: str = ""

    def __str__(self) -> str:
        return f">= {self.low:,} and <= {self.high:,}" + (f" ({self.why})" if self.why else "")

    def __contains__(self, value: int) -> bool:
        return self.low <= value <= self.high


EPOCHS = Range(1, 10 ** 6, "more than a million epochs is a typo")
BATCH = Range(2, 2 ** 16, "the loss contrasts images within a batch; MoCo-v3's largest is 4096")
ACCUM_STEPS = Range(1, 2 ** 16, "1 = no gradient accumulation")
SEED = Range(0, 2 ** 32 - 1, "a 32-bit RNG seed, the range numpy and scikit-learn's t-SNE take")
IMAGE_SIDE = Range(8, 4096, "pixels per side: the networks' strides leave nothing of a smaller image, and at "
                            "4096 one image already takes 48 MiB")


def checked(default: Any, requirement: str = "", ok: Callable[[Any], bool] | None = None,
            choices: Callable[[], Any] | None = None, valid: Range | None = None, **kwargs) -> Any:
    """A dataclass field with its check: ``ok(value)`` must hold (else "must be ``requirement``"), or the
    value must be a key of the registry ``choices()`` returns (with ``ok`` too: either holds; the message
    lists the choices, then ``requirement``). ``valid``: the ``Range`` ``ok`` checks, for ``override_keys``."""
    return field(default=default, metadata={"requirement": requirement, "ok": ok, "choices": choices, "valid": valid},
                 **kwargs)


def bounded(default: Any, valid: Range, **kwargs) -> Any:
    """A checked int field whose value lies in ``valid``; for a tuple of ints (``default`` a tuple) each element does."""
    if isinstance(default, tuple):
        return checked(default, f"ints {valid}", lambda v: all(x in valid for x in v), valid=valid, **kwargs)
    return checked(default, str(valid), lambda v: v in valid, valid=valid, **kwargs)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """``{field name: its type}`` of a config dataclass, resolved once per class (resolving the
    string annotations of ``from __future__ import annotations`` is what made building configs slow)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_TYPE_WORDS = {bool: "True or False", int: "an int", float: "a finite number", str: "a string"}
TYPE_WORDS = {"int": int, "float": float, "bool": bool, "str": str, "ints": tuple[int, ...]}  # a key's type by name


class Config:
    """What every config dataclass shares: dict and YAML round trips, overrides, validation, diff."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config"):
        """The config stored as ``d`` (``to_dict``), nested sections and sub-configs included."""
        hints = field_types(cls)
        unknown = sorted(set(d) - set(hints), key=str)
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s) {shown(unknown)}; valid fields: {list(hints)}")
        values = {}
        for key, value in d.items():
            values[key] = _from_plain(hints[key], value, f"{source}: '{key}'")
        return cls(**values)

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied and validated; unknown fields raise ``ConfigError``."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown config field(s) {shown(unknown)}; valid fields: "
                              f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes).validate()

    def override(self, pairs) -> "Config":
        """Apply ``["alpha=2", "train.epochs=5", "teacher.epochs=3"]``, each typed by its field, then validate."""
        return self._apply(pairs).validate()

    def _apply(self, pairs) -> "Config":
        cfg = self
        for pair in pairs:
            path, sep, raw = pair.partition("=")
            if not sep or not path:
                raise ConfigError(f"override {shown(pair)}: expected KEY=VALUE with KEY one of {self.keys()}")
            cfg = cfg._set(path.split("."), raw, pair)
        return cfg

    def _set(self, keys: list[str], raw: str, pair: str, prefix: str = ""):
        hints = field_types(type(self))
        key, said = keys[0], f"override {shown(pair)}"
        if key not in hints:
            extra = self._extra_override(key, raw, pair) if len(keys) == 1 else None
            if extra is not None:
                return extra
            raise ConfigError(f"{said}: unknown key {shown(prefix + key)}; valid keys: {self.keys(prefix)}")
        value = getattr(self, key)
        if len(keys) > 1:
            if not isinstance(value, Config):
                raise ConfigError(f"{said}: '{prefix}{key}' has no sub-keys")
            return dataclasses.replace(self, **{key: value._set(keys[1:], raw, pair, f"{prefix}{key}.")})
        if _section_type(hints[key]) is not None:
            raise ConfigError(f"{said}: '{key}' is a section; set one of its keys ('{key}.KEY=VALUE')")
        return dataclasses.replace(self, **{key: parse_value(hints[key], raw, f"{said}: '{prefix}{key}'",
                                                        requirement(type(self), key))})

    def _extra_override(self, key: str, raw: str, pair: str):
        """Hook for keys that are not fields (e.g. a method's own hyperparameters); None = unknown."""
        return None

    def override_keys(self, prefix: str = "") -> dict[str, tuple]:
        """Every key an override can set on this config: ``{key: (its type's word in TYPE_WORDS, its
        requirement, its Range's (low, high) or None)}``, sections and set sub-configs spelled
        ``section.key``, plus ``extra_override_keys``."""
        out = {}
        for f in dataclasses.fields(self):
            hint, value = field_types(type(self))[f.name], getattr(self, f.name)
            if isinstance(value, Config):
                out |= value.override_keys(f"{prefix}{f.name}.")
            elif _section_type(hint) is None:
                word, valid = next((w for w, t in TYPE_WORDS.items() if t == hint), "any"), f.metadata.get("valid")
                out[f"{prefix}{f.name}"] = (word, f.metadata.get("requirement", ""),
                                            None if valid is None else (valid.low, valid.high))
        return out | {f"{prefix}{k}": v for k, v in self.extra_override_keys().items()}

    def extra_override_keys(self) -> dict[str, tuple]:
        """Hook: the keys ``_extra_override`` accepts (e.g. a method's own hyperparameters), as ``override_keys``."""
        return {}

    @classmethod
    def keys(cls, prefix: str = "") -> list[str]:
        """Every settable key, sections spelled ``section.key``."""
        out = []
        for name, hint in field_types(cls).items():
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
        hints = field_types(cls)
        what = "section" if not prefix else "key"
        unknown = sorted(set(raw) - set(hints), key=str)
        if unknown:
            raise ConfigError(f"{source}: unknown {what} {shown(prefix + str(unknown[0]))}; valid {what}s: {list(hints)}")
        missing = [k for k in hints if k not in raw]
        if missing:
            raise ConfigError(f"{source}: missing {what} '{prefix}{missing[0]}'")
        values = {}
        for key, hint in hints.items():
            section = _section_type(hint)
            if section is not None:
                if not isinstance(raw[key], dict):
                    raise ConfigError(f"{source}: section '{key}' must be a mapping of keys, got {shown(raw[key])}")
                values[key] = section._from_sections(raw[key], source, f"{prefix}{key}.")
            else:
                values[key] = coerce_value(hint, raw[key], f"{source}: '{prefix}{key}'", requirement(cls, key))
        return cls(**values)

    def validate(self, source: str | None = None, prefix: str = "", **context):
        """Check every field's type and range, then ``_check_combinations``; return ``self``.

        A failure raises ``ConfigError`` naming the field, e.g. ``config field 'lr' = -0.1: must be > 0``.
        ``context`` (``num_train``, ``world_size``) goes to ``_check_combinations``; a ``world_size`` below 1
        is refused here, for every config.
        """
        world_size = context.get("world_size", 1)
        if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
            raise ConfigError(f"world size {shown(world_size)} (memory --world-size, or torchrun's processes): must be "
                              f"an int >= 1, the number of processes the global batch is split over")
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), field_types(type(self))[f.name]
            where = f"{prefix}{f.name}"
            if isinstance(value, Config):
                value.validate(source, f"{where}.")
                continue
            _check_type(hint, value, where, source)
            meta = f.metadata
            if meta.get("choices") is not None:
                choices, also = meta["choices"](), meta.get("ok")
                require_field(value in choices or (also is not None and also(value)), where, value,
                              f"must be one of {choices}" + (f" {meta['requirement']}" if meta["requirement"] else ""),
                              source)
            elif meta.get("ok") is not None:
                require_field(meta["ok"](value), where, value, f"must be {meta['requirement']}", source)
        self._check_combinations(source, **context)
        return self

    def _check_combinations(self, source: str | None = None, **context) -> None:
        """Checks across fields (overridden by configs that have some)."""

    def diff(self, stored: dict) -> dict[str, tuple]:
        """Fields whose ``stored`` value (a checkpoint's config) differs from this config's. A field the
        stored config lacks (added to the class since the run was saved) counts as its default, the
        behaviour the run was trained with, so adding a field at its default keeps every cache valid."""
        return config_diff(_with_defaults(type(self), stored), self.to_dict())


def _with_defaults(cls: type, stored: dict) -> dict:
    """``stored`` (a ``to_dict``) with each field of ``cls`` it lacks at the field's default, sections included."""
    out = dict(stored)
    for f in dataclasses.fields(cls):
        section = _section_type(field_types(cls)[f.name])
        if f.name in out:
            if section is not None and isinstance(out[f.name], dict):
                out[f.name] = _with_defaults(section, out[f.name])
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def _section_type(hint):
    """The ``Config`` class a field holds (a section, or an optional sub-config), else None."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and issubclass(candidate, Config):
            return candidate
    return None


def require_field(ok: bool, where: str, value: Any, requirement: str, source: str | None = None) -> None:
    if not ok:
        prefix = f"{source}: " if source else ""
        raise ConfigError(f"{prefix}config field '{where}' = {shown(value)}: {requirement}")


def _check_type(hint, value, where: str, source: str | None) -> None:
    origin = typing.get_origin(hint)
    if origin is tuple:
        elem = typing.get_args(hint)[0]
        ok = isinstance(value, tuple) and all(isinstance(v, elem) and not isinstance(v, bool) for v in value)
        require_field(ok, where, value, f"must be a tuple of {elem.__name__}s", source)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        require_field(ok, where, value, "must be a finite number", source)
    elif hint in _TYPE_WORDS:
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        require_field(ok, where, value, f"must be {_TYPE_WORDS[hint]}", source)


def requirement(cls: type, name: str) -> str:
    """What field ``name`` of the config class ``cls`` must be, as its check states it ("" where it states none)."""
    return next(f.metadata.get("requirement", "") for f in dataclasses.fields(cls) if f.name == name)


def parse_value(hint, raw: str, where: str, needs: str = ""):
    """An override string as the field's type (``needs``: the field's requirement, for the message)."""
    if typing.get_origin(hint) is tuple:
        try:
            return tuple(int(s) for s in raw.split(",") if s)
        except ValueError:
            raise ConfigError(f"{where}: {shown(raw)} is not a comma-separated list of ints"
                              + (f"; valid: {needs}" if needs else "")) from None
    return coerce_value(hint, raw, where, needs)


def coerce_value(hint, value, where: str, needs: str = ""):
    """A YAML scalar or override string as ``hint`` (int, float, bool, str), or ``ConfigError``.

    Args:
        hint: the field's type; other types pass through unchanged.
        value: the YAML value or override string.
        where: the start of the message, naming the file or override and the field.
        needs: the field's requirement (``requirement``), added to the message (default "": none).

    A float for an int field (``1e23``, ``5.0``) is refused, never rounded.
    """
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
        if hint is int and _is_float(value):
            fix = f"; a float is never rounded to an int: write an int{' ' + needs if needs else ''}"
        else:
            fix = f"; valid: {needs}" if needs else ""
        raise ConfigError(f"{where} must be {_TYPE_WORDS[hint]}, got {shown(value)}{fix}")
    return value


def _is_float(value) -> bool:
    """A float, or a string that reads as one (``"1e23"``)."""
    if isinstance(value, float):
        return True
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def _from_plain(hint, value, where: str):
    """A value of ``to_dict`` (JSON or a checkpoint) back as the field's type."""
    section = _section_type(hint)
    if section is not None:
        return None if value is None else section.from_dict(value, where)
    if typing.get_origin(hint) is tuple:
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


MAX_DEPTH = 16  # nesting levels a config may have (a section of keys is 2)
_YAML_TAG = "tag:yaml.org,2002:"


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for configs: plain values only, every refusal a one-line ``ConfigError``.

    Refused, each naming ``source``, the line and the column: anchors and aliases (``&a``, ``*a``: a
    1 KB file of nested aliases expands to gigabytes, "billion laughs"), merge keys (``<<``), a key
    given twice in one mapping (naming the line of the first), tags beyond YAML's own
    (``!!python/...``), and nesting deeper than ``MAX_DEPTH``.

    Args:
        stream: the YAML text (str or bytes).
        source: the file name the messages give (default "config").
    """

    def __init__(self, stream, source: str = "config"):
        super().__init__(stream)
        self.source = source
        self.depth = 0

    def refusal(self, mark, problem: str) -> ConfigError:
        """``ConfigError`` "<source>, line L, column C: <problem>" at the YAML ``mark``."""
        return ConfigError(f"{self.source}, line {mark.line + 1}, column {mark.column + 1}: {problem}")

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise self.refusal(event.start_mark, "YAML anchors and aliases are not allowed in a config; "
                                                 "write the value out")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.refusal(event.start_mark, f"values nested deeper than {MAX_DEPTH} levels; a config has "
                                                 f"sections of plain keys")
        node = super().compose_node(parent, index)
        self.depth -= 1
        return node

    def construct_mapping(self, node, deep=False):
        first = {}  # key -> line where it appeared first
        for key_node, _ in node.value:
            if key_node.tag == _YAML_TAG + "merge":
                raise self.refusal(key_node.start_mark, "YAML merge keys (<<) are not allowed in a config; "
                                                        "write the keys out")
            key = self.construct_object(key_node, deep=True)
            try:
                line = first.get(key)
            except TypeError:  # a list or mapping as a key
                raise self.refusal(key_node.start_mark, f"the key {shown(key)} is not a plain value") from None
            if line is not None:
                raise self.refusal(key_node.start_mark, f"duplicate key {shown(key)} (first at line {line}); "
                                                        f"keep one of them")
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than int() converts
            raise self.refusal(node.start_mark, f"the integer {shown(node.value)} has too many digits") from None

    def refuse_tag(self, node):
        tag = node.tag.replace(_YAML_TAG, "!!")
        why = " (it would build a Python object)" if tag.startswith("!!python/") else ""
        raise self.refusal(node.start_mark, f"the tag {shown(tag)} is not allowed in a config{why}; write a plain "
                                            f"value (a number, string, true/false, list or mapping)")


StrictLoader.add_constructor(_YAML_TAG + "int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor(None, StrictLoader.refuse_tag)


def parse_yaml(text: str | bytes, source: str = "config"):
    """The document in ``text`` read by ``StrictLoader``; a syntax error is one ``ConfigError`` line naming
    ``source`` (default "config"), the line and the column."""
    loader = None
    try:
        loader = StrictLoader(text, source)  # reads the first bytes: a decoding error may come here
        return loader.get_single_data()
    except yaml.reader.ReaderError as err:  # not UTF-8, or control characters: a position, not a line
        raise ConfigError(f"{source}, position {err.position}: {_clip(str(err.reason))} ({shown(err.character)}); "
                          f"save the config as plain UTF-8 text") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = ""
        if err.context:
            since = f" at line {err.context_mark.line + 1}" if err.context_mark is not None else ""
            context = f" ({_clip(err.context)}{since})"
        raise ConfigError(f"{source}{where}: YAML syntax error: {_clip(err.problem or '')}{context}; "
                          f"fix the file there") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not a readable YAML file: {_clip(' '.join(str(err).split()))}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def read_yaml(path) -> dict:
    """The YAML mapping in the file ``path``, read by ``parse_yaml``; a missing file names the configs that exist beside it."""
    path = Path(path)
    if not path.is_file():
        folder = path.parent if path.parent.is_dir() else REPOSITORY / "configs"
        known = sorted(str(p) for p in folder.glob("*.yaml"))
        raise ConfigError(f"config file {path} not found; configs in {folder}: {known}")
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror}); make it readable") from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {shown(raw)}")
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


