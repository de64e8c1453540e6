"""Run one benchmark script against two checkouts, alternating, in one session.

    .venv/bin/python benchmarks/side_by_side.py --before DIR [--after DIR] [--rounds 2] \\
        bench_conat.py [its arguments ...]

A refactor must not make the hub slower, and this machine is noisy: figures only compare
when both trees are measured in the same minutes. Each round runs the script once from
``--before`` and once from ``--after`` (default: this checkout), the order swapped every
round, each with its own tree first on ``PYTHONPATH`` and as the working directory, and
with the tree's own ``.venv/bin/python`` when it has one (this interpreter otherwise). A
tree needs its own virtualenv (``make .venv/.test-installed`` in it) when a benchmark
starts projects: the hub gives a project program a clean environment, without
``PYTHONPATH``, so the program comes from the virtualenv's (editable) install. Every run's
output is printed under a header naming the tree; the benchmark's own lines are unchanged,
so its figures can be read side by side. The exit status is the first non-zero status of
a run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run(tree: Path, script: str, args: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    own = tree / ".venv" / "bin" / "python"
    python = str(own) if own.exists() else sys.executable
    started = time.monotonic()
    print(f"===== {tree} ({python}): {script} {' '.join(args)}", flush=True)
    done = subprocess.run([python, str(tree / "benchmarks" / script), *args], cwd=tree, env=env)
    print(f"===== {tree}: exit {done.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    return done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="checkout of the commit to compare with")
    parser.add_argument("--after", type=Path, default=HERE, help="checkout measured against it (default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("script", help="a benchmarks/ script name, e.g. bench_conat.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    options = parser.parse_args()
    trees = [options.before.resolve(), options.after.resolve()]
    for tree in trees:
        if not (tree / "benchmarks" / options.script).is_file():
            parser.error(f"{tree} has no benchmarks/{options.script}")
    status = 0
    for round_ in range(options.rounds):
        print(f"##### round {round_ + 1} of {options.rounds}", flush=True)
        for tree in trees if round_ % 2 == 0 else trees[::-1]:
            status = status or run(tree, options.script, options.args)
    return status


if __name__ == "__main__":
    sys.exit(main())
