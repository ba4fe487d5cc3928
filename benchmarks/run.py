"""Run every benchmark in this folder, one after another, and print their tables.

Usage: ``python benchmarks/run.py [--quick] [--only NAME ...]``

Each ``bench_*.py`` prints its own table with podshare's figure beside the peer figure
measured in the same run, and their ratio. Benchmarks that need a server (Redis) start
their own from PATH and say so when it is missing. Figures are printed, never asserted:
benchmarks are not part of the pass/fail suite.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Arguments that make each benchmark a short smoke run (for --quick).
QUICK_ARGS: dict[str, list[str]] = {
    "bench_store": ["--quick"],
    "bench_sync": ["--keys", "10000"],
    "bench_redis": ["--rounds", "200", "--writes", "2000"],
    "bench_tcp": ["--samples", "300", "--writes", "2000"],
    "bench_callreply": ["--calls", "300", "--users", "1000"],
    "bench_ydoc": ["--quick"],
    "bench_auth": ["--quick"],
    "bench_yjs_bridge": ["--edits", "200", "--samples", "200"],
    "bench_persistence": ["--keys", "10000", "--intervals", "2"],
    "bench_cross": ["--quick"],
    "bench_hydrate": ["--quick"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke runs")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run")
    args = parser.parse_args()

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {name.removesuffix(".py") for name in args.only}
        scripts = [s for s in scripts if s.stem in wanted]
    failed: list[str] = []
    for script in scripts:
        extra = QUICK_ARGS.get(script.stem, []) if args.quick else []
        print(f"\n=== {script.stem} {' '.join(extra)}".rstrip(), flush=True)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(script), *extra], check=False)
        elapsed = time.perf_counter() - started
        print(f"--- {script.stem}: exit {result.returncode} in {elapsed:.1f} s", flush=True)
        if result.returncode != 0:
            failed.append(script.stem)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
