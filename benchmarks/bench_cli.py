"""Command-line latency: how long ``python -m desupcon`` takes to answer help and mistakes, this checkout
against another, and whether it imported torch to answer.

Each case is a fresh process, timed from outside (start to exit), the two checkouts interleaved one
process of each per round, so a machine's load changes both alike; the median is printed with the
ratio. Each process's cache folder (``XDG_CACHE_HOME``) is a temporary folder shared by one checkout's
processes, and one untimed unknown-method call per checkout first builds the command line's index
(``desupcon/core/cli_index.py``), as ``source scripts/setup_env.sh`` does; ``--cold`` gives every
process an empty cache folder instead (the first call after an edit of the package builds the index). ``torch`` says whether a process imported torch.

    git worktree add /tmp/before 17a84ee
    python benchmarks/bench_cli.py --baseline /tmp/before --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # what a newcomer types first, and the mistakes they make
    "--help": ["--help"],
    "train --help": ["train", "--help"],
    "unknown method": ["train", "nosuch"],
    "unknown --set key": ["train", "crd", "--set", "nosuch=1"],
    "bad --set value": ["train", "crd", "--set", "lr=abc"],
}
RUN = "import runpy, sys; sys.argv = ['desupcon', *sys.argv[1:]]\ntry:\n    runpy.run_module('desupcon', run_name='__main__')\n" \
      "except SystemExit:\n    pass\nsys.stderr.write('\\ntorch imported: ' + str('torch' in sys.modules) + '\\n')"


def measure(checkout: Path, argv: list[str], cache: str) -> tuple[float, bool]:
    """Seconds of one fresh ``python -m desupcon ARGV`` in ``checkout`` (cache folder ``cache``), and whether it
    imported torch."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "XDG_CACHE_HOME": cache, "DESUPCON_PROFILE": "smoke",
           "DESUPCON_HOME": tempfile.gettempdir() + "/bench_cli_home"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, *argv], env=env, cwd=checkout, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, done.stderr.strip().endswith("torch imported: True")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per case and checkout (default 5)")
    parser.add_argument("--cold", action="store_true", help="an empty cache folder for every process (no index yet)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    checkouts = {"this checkout": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    homes = {name: tempfile.mkdtemp(prefix="bench_cli_") for name in checkouts}
    runs = {name: {case: [] for case in CASES} for name in checkouts}
    if not args.cold:
        for name, path in checkouts.items():
            measure(path, CASES["unknown method"], homes[name])
    for _ in range(args.rounds):
        for case, argv in CASES.items():
            for name, path in checkouts.items():
                home = tempfile.mkdtemp(prefix="bench_cli_") if args.cold else homes[name]
                runs[name][case].append(measure(path, argv, home))
    print(f"python -m desupcon, median of {args.rounds} fresh processes each ({cpu_model()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; {'cold: no index' if args.cold else 'index built first'}):")
    figures = {}
    for case in CASES:
        cells = []
        for name, rs in runs.items():
            seconds, torch = statistics.median(s for s, _ in rs[case]), any(t for _, t in rs[case])
            figures.setdefault(case, {})[name] = {"seconds": seconds, "torch": torch, "runs": rs[case]}
            cells.append(f"{name} {seconds:6.2f} s (torch {'yes' if torch else 'no '})")
        line = f"  {case:<18} " + "  ".join(cells)
        if args.baseline:
            line += f"  -> {figures[case]['baseline']['seconds'] / figures[case]['this checkout']['seconds']:.1f}x faster"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
