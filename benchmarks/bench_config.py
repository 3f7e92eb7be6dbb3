"""Config build time: ``profile.student_config("crd")`` and a ``--set`` override, this checkout against another.

Every figure comes from a fresh Python process (imports done before the clock starts), so the first
build pays for what a CLI call or a notebook's first cell pays (type hints, validation); the repeated
builds show the steady state. With ``--baseline DIR`` (a checkout of an earlier commit, e.g. made by
``git worktree add /tmp/before 9f0f233``) the two run interleaved, one process of each per round,
and the ratios are printed side by side.

    python benchmarks/bench_config.py --baseline /tmp/before --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
MEASURE = """
import json, time
try:
    from desupcon.study.profiles import PROFILES
except ImportError:  # a checkout from before the layered package, where profiles was a top-level module
    PROFILES = __import__("desupcon.profiles", fromlist=["PROFILES"]).PROFILES
profile = PROFILES["smoke"]
clock = time.perf_counter
t = clock(); cfg = profile.student_config("crd"); first = clock() - t
repeat = []
for _ in range(REPEATS):
    t = clock(); profile.student_config("crd"); repeat.append(clock() - t)
override = []
for value in range(REPEATS):
    t = clock(); cfg.override([f"alpha={2.0 + value}"]); override.append(clock() - t)
print(json.dumps({"first": first, "repeat": min(repeat), "override": min(override)}))
"""


def measure(checkout: Path, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "DESUPCON_HOME": os.environ.get("DESUPCON_HOME", "/tmp/bench_config")}
    out = subprocess.run([sys.executable, "-c", MEASURE.replace("REPEATS", str(repeats))], env=env, cwd=checkout,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per checkout (default 5)")
    parser.add_argument("--repeats", type=int, default=5, help="repeated builds per process (default 5)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    checkouts = {"this checkout": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs = {name: [] for name in checkouts}
    for _ in range(args.rounds):  # interleaved: a machine's load changes both alike
        for name, path in checkouts.items():
            runs[name].append(measure(path, args.repeats))
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    print(f"config build, median of {args.rounds} fresh processes each ({cpu_model()}):")
    rows = {"first": 'student_config("crd"), first in a process',
            "repeat": 'student_config("crd"), repeated (best of the repeats)',
            "override": "cfg.override(['alpha=...']) (best of the repeats)"}
    for key, what in rows.items():
        line = f"  {what:<54} " + "  ".join(f"{name} {m[key] * 1e3:9.2f} ms" for name, m in medians.items())
        if args.baseline:
            line += f"  -> {medians['baseline'][key] / medians['this checkout'][key]:.0f}x faster"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "medians": medians, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
