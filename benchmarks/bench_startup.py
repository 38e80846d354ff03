"""Wall time of ``mlrig --help`` and ``import mlrig``, and the heavy modules they import.

    python benchmarks/bench_startup.py               # 20 runs of each command
    python benchmarks/bench_startup.py --runs 50
    python benchmarks/bench_startup.py --json

Each command runs as a fresh subprocess, ``--runs`` times after ``--warmup`` untimed runs
(which fill the OS page cache); the commands take turns, so noise on the machine hits each
alike. ``mlrig --help`` is the console script of the running interpreter's environment
(``Path(sys.executable).parent / "mlrig"``). ``python -c pass`` is the floor: the
interpreter's own start-up, which no change to mlrig can remove.

One more run of each command under ``python -X importtime`` lists the heavy modules it
imported (torch, tensorflow, onnxruntime, boto3, s3fs: expected none) and the imports
that took longest. Goal: median of ``mlrig --help`` under 300 ms. ``--check`` exits 1
when the goal is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import percentile  # benchmarks/_common.py

GOAL_MS = 300.0
HEAVY = ("torch", "tensorflow", "onnxruntime", "boto3", "s3fs")


def commands() -> dict[str, list[str]]:
    """The measured commands by label (``python -c pass`` is the baseline)."""
    script = Path(sys.executable).parent / "mlrig"
    if not script.exists():
        msg = f"no console script at {script}; install mlrig in this environment (pip install -e .)"
        raise SystemExit(msg)
    return {
        "mlrig --help": [str(script), "--help"],
        "import mlrig": [sys.executable, "-c", "import mlrig"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }


def _run_once(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60
    )
    return (time.perf_counter() - start) * 1000


def import_profile(command: list[str]) -> dict[str, Any]:
    """Run ``command`` once under ``-X importtime``: heavy modules and slowest imports."""
    if command[0] != sys.executable:  # the console script: run it with our interpreter
        command = [sys.executable, *command]
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
        timeout=60,
    )
    modules: set[str] = set()
    top: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if not cumulative.strip().isdigit():  # the header line
            continue
        modules.add(name.strip())
        if not name[1:].startswith(" "):  # imported by the program itself, not nested
            top.append((int(cumulative), name.strip()))
    heavy = sorted(h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules))
    slowest = [
        {"module": name, "cumulative_ms": round(us / 1000, 1)}
        for us, name in sorted(top, reverse=True)[:5]
    ]
    return {"heavy_modules": heavy, "modules_imported": len(modules), "slowest_imports": slowest}


def measure(runs: int, warmup: int) -> dict[str, Any]:
    cmds = commands()
    for _ in range(warmup):
        for command in cmds.values():
            _run_once(command)
    times: dict[str, list[float]] = {label: [] for label in cmds}
    for _ in range(runs):
        for label, command in cmds.items():
            times[label].append(_run_once(command))
    floor = statistics.median(times["python -c pass"])
    results = []
    for label, command in cmds.items():
        median = statistics.median(times[label])
        row: dict[str, Any] = {
            "name": label,
            "command": command,
            "runs": runs,
            "min_ms": round(min(times[label]), 1),
            "median_ms": round(median, 1),
            "p90_ms": round(percentile(times[label], 90), 1),
            "ratio_to_python": round(median / floor, 2) if floor else None,
            "over_python_ms": round(median - floor, 1),
        }
        if label != "python -c pass":
            row.update(import_profile(command))
        if label == "mlrig --help":
            row["goal_ms"] = GOAL_MS
            row["goal_met"] = median < GOAL_MS
        results.append(row)
    return {"goal_ms": GOAL_MS, "runs": runs, "warmup": warmup, "results": results}


def _table(report: dict[str, Any]) -> str:
    head = (
        f"{'command':<16} {'min ms':>8} {'median ms':>10} {'p90 ms':>8} {'x python':>9}  "
        f"{'heavy modules':<14} goal"
    )
    lines = [
        f"{report['runs']} runs each, after {report['warmup']} warm-up runs",
        head,
        "-" * len(head),
    ]
    for r in report["results"]:
        heavy = ", ".join(r.get("heavy_modules", [])) or ("none" if "heavy_modules" in r else "-")
        goal = ""
        if "goal_met" in r:
            goal = f"< {r['goal_ms']:.0f} ms: {'ok' if r['goal_met'] else 'MISSED'}"
        lines.append(
            f"{r['name']:<16} {r['min_ms']:>8.1f} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} "
            f"{r['ratio_to_python']:>9.2f}  {heavy:<14} {goal}"
        )
    for r in report["results"]:
        if r.get("slowest_imports"):
            slow = ", ".join(
                f"{s['module']} {s['cumulative_ms']:.0f} ms" for s in r["slowest_imports"][:3]
            )
            lines.append(f"slowest imports of {r['name']!r} (one -X importtime run): {slow}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per command first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    report = measure(args.runs, args.warmup)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    missed = [r for r in report["results"] if r.get("goal_met") is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
