"""The command line's index of what ``train RUN --set KEY=VALUE`` accepts, so that a mistyped run, key or
value is answered without importing torch.

The index holds every run name and, for each, the keys its config takes with their types and
requirements, as the package builds them (``desupcon.study.profiles.cli_index``). It is built on the
first call that needs it (that call imports the whole package, a few seconds) and kept in the user's
cache folder (``$XDG_CACHE_HOME/desupcon``, default ``~/.cache/desupcon``; never the output home, so a
refused command writes nothing there), one file per fingerprint of the package's source files (path,
size, modification time), so an edited or new method file gets a new index. ``check_run`` raises the
``ConfigError`` the full config build would raise for an unknown run, an unknown key, a value of
the wrong type or outside its field's ``Range``; what it lets through is still checked in full when
the run's config is built.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from desupcon.core.config import TYPE_WORDS, parse_value, require_field, shown
from desupcon.core.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1]


def source_fingerprint() -> str:
    """SHA-256 of the path, size and modification time of every source file of the package."""
    stats = "".join(f"{p.relative_to(PACKAGE)}\0{s.st_size}\0{s.st_mtime_ns}\n"
                    for p in sorted(PACKAGE.rglob("*.py")) for s in [p.stat()])
    return hashlib.sha256(stats.encode()).hexdigest()


def load(build: Callable[[], dict]) -> dict:
    """The index of this version of the package's source: the cached one, else ``build()``'s, cached
    (a home that cannot be written to just means building it again next time)."""
    fingerprint = source_fingerprint()
    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "desupcon" / f"cli_index-{fingerprint[:16]}.json"
    try:
        index = json.loads(path.read_text())
        if index.get("fingerprint") == fingerprint:
            return index
    except (OSError, ValueError):
        pass  # no index yet, or an unreadable one: build it
    text = json.dumps({"fingerprint": fingerprint, **build()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{fingerprint[:8]}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        pass
    return json.loads(text)  # as a cached one reads


def check_run(index: dict, run: str, pairs) -> None:
    """Raise the ``ConfigError`` of an unknown ``run``, or of an override in ``pairs`` (``KEY=VALUE``)
    whose key ``run`` does not take or whose value does not parse as the key's type."""
    runs = index["runs"]
    if run not in runs:
        raise ConfigError(f"unknown run '{run}': choose one of {list(runs)}")
    keys, listed = runs[run]["keys"], runs[run]["listed"]
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {shown(pair)}: expected KEY=VALUE with KEY one of {listed}")
        if key not in keys:
            prefix = key.rpartition(".")[0]
            valid = [k for k in keys if k.rpartition(".")[0] == prefix] if prefix else []
            raise ConfigError(f"override {shown(pair)}: unknown key {shown(key)}; valid keys: {valid or listed}")
        word, needs, bounds = keys[key]
        if word in TYPE_WORDS:
            value = parse_value(TYPE_WORDS[word], raw, f"override {shown(pair)}: '{key}'", needs)
            if bounds is not None:
                require_field(all(bounds[0] <= v <= bounds[1] for v in (value if word == "ints" else (value,))),
                              key, value, f"must be {needs}")
