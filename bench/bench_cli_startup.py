"""How long every command line takes to answer ``--help``: this tree against a baseline tree.

    .venv/bin/python bench/bench_cli_startup.py [--baseline DIR] [--repeats 5] [--only TOOL ...]

Runs ``python tools/<tool>.py --help`` for every tool, ``python -m megatron_mio.pretrain --help``
and ``python -m megatron_mio.checkpoint --help``, each in a fresh interpreter with the tree first
on ``PYTHONPATH`` (as a user's shell would, no ``PYTHONWARNINGS``), and reports the median wall
time of ``--repeats`` runs.  With ``--baseline`` (another checkout, e.g. ``git archive`` of an
older commit with its compiled ``megatron_mio/_C*.so``), the two trees' runs alternate, so a load
spike on a shared machine hits both alike, and the ratio is from the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TREE = Path(__file__).resolve().parents[1]


def commands(tree: Path) -> dict[str, list[str]]:
    """Every entry point of ``tree``, by name: the command that prints its help."""
    found = {path.stem: [str(path), "--help"] for path in sorted((tree / "tools").glob("*.py"))}
    found["pretrain"] = ["-m", "megatron_mio.pretrain", "--help"]
    found["checkpoint"] = ["-m", "megatron_mio.checkpoint", "--help"]
    return found


def time_once(tree: Path, arguments: list[str]) -> float:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = str(tree)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], cwd=tree, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(arguments)} exited {done.returncode}:\n{done.stderr}")
    return elapsed


def measure(trees: dict[str, Path], repeats: int, only: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Median seconds per (tree label, tool); the trees' runs alternate."""
    per_tree = {label: commands(tree) for label, tree in trees.items()}
    tools = sorted(set().union(*per_tree.values()) & set(only or set().union(*per_tree.values())))
    medians: dict[str, dict[str, float]] = {label: {} for label in trees}
    for tool in tools:
        samples: dict[str, list[float]] = {label: [] for label in trees}
        for _ in range(repeats):
            for label, tree in trees.items():
                if tool in per_tree[label]:
                    samples[label].append(time_once(tree, per_tree[label][tool]))
        for label, values in samples.items():
            if values:
                medians[label][tool] = statistics.median(values)
        print(f"{tool}: " + ", ".join(f"{label} {medians[label].get(tool, float('nan')):.2f} s"
                                      for label in trees), file=sys.stderr, flush=True)
    return medians


def table(medians: dict[str, dict[str, float]]) -> str:
    labels = list(medians)
    tools = sorted(set().union(*(m.keys() for m in medians.values())))
    header = "| tool | " + " | ".join(f"{label} `--help`" for label in labels)
    if len(labels) == 2:
        header += " | baseline / this tree"
    lines = [header + " |", "|" + " --- |" * (header.count("|"))]
    for tool in tools:
        row = [f"{medians[label][tool]:.2f} s" if tool in medians[label] else "-" for label in labels]
        if len(labels) == 2 and all(tool in medians[label] for label in labels):
            row.append(f"{medians[labels[0]][tool] / medians[labels[1]][tool]:.1f}x")
        elif len(labels) == 2:
            row.append("-")
        lines.append(f"| {tool} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=None, help="these tools only (names as in the table)")
    args = parser.parse_args()
    trees = {"this tree": TREE}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), "this tree": TREE}
    print(table(measure(trees, args.repeats, args.only)))


if __name__ == "__main__":
    main()
