"""One config system for every run: typed frozen dataclasses, YAML, ``--set a.b=value``, validation, diff.

Every run is one config object stored inside its checkpoint and JSON log (the distillation
``RunConfig``, flat fields; the self-supervised ``SSLConfig``, sections ``data``, ``train``, ``model``,
``eval``). Both are ``Config`` dataclasses, so both load from a profile or from YAML, take the same
overrides, validate the same way and give the same diff for the stale-cache guard. This module
knows none of them.

A field's check lives in its metadata (``checked(default, "> 0", lambda v: v > 0)``), or
``choices``: a function returning the valid values (a registry's keys), read when validating.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable

import yaml

from desupcon.core.errors import ConfigError
from desupcon.core.paths import REPOSITORY



def checked(default: Any, requirement: str = "", ok: Callable[[Any], bool] | None = None,
            choices: Callable[[], Any] | None = None, **kwargs) -> Any:
    """A dataclass field with its check: ``ok(value)`` must hold (else "must be ``requirement``"),
    or the value must be a key of the registry ``choices()`` returns."""
    return field(default=default, metadata={"requirement": requirement, "ok": ok, "choices": choices}, **kwargs)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """``{field name: its type}`` of a config dataclass, resolved once per class (resolving the
    string annotations of ``from __future__ import annotations`` is what made building configs slow)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_TYPE_WORDS = {bool: "True or False", int: "an int", float: "a finite number", str: "a string"}


class Config:
    """What every config dataclass shares: dict and YAML round trips, overrides, validation, diff."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config"):
        """The config stored as ``d`` (``to_dict``), nested sections and sub-configs included."""
        hints = field_types(cls)
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
        hints = field_types(type(self))
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
                values[key] = coerce_value(hint, raw[key], f"{source}: '{prefix}{key}'")
        return cls(**values)

    def validate(self, source: str | None = None, prefix: str = "", **context):
        """Check every field's type and range, then ``_check_combinations``; return ``self``.

        A failure raises ``ConfigError`` naming the field, e.g. ``config field 'lr' = -0.1: must be > 0``.
        """
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), field_types(type(self))[f.name]
            where = f"{prefix}{f.name}"
            if isinstance(value, Config):
                value.validate(source, f"{where}.")
                continue
            _check_type(hint, value, where, source)
            meta = f.metadata
            if meta.get("choices") is not None:
                choices = meta["choices"]()
                require_field(value in choices, where, value, f"must be one of {choices}", source)
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
        raise ConfigError(f"{prefix}config field '{where}' = {value!r}: {requirement}")


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


def _parse(hint, raw: str, where: str):
    """An override string as the field's type."""
    if typing.get_origin(hint) is tuple:
        try:
            return tuple(int(s) for s in raw.split(",") if s)
        except ValueError:
            raise ConfigError(f"{where}: '{raw}' is not a comma-separated list of ints") from None
    return coerce_value(hint, raw, where)


def coerce_value(hint, value, where: str):
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
        folder = path.parent if path.parent.is_dir() else REPOSITORY / "configs"
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


