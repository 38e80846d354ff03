"""Search strategies side by side: mlrig's ``nevergrad`` (NGOpt) and ``random`` beside
Optuna's default TPE sampler, on three test functions and one real tuning task.

    python benchmarks/bench_search.py                       # the full run (issue 12)
    python benchmarks/bench_search.py --skip-digits --json  # the test functions only
    python benchmarks/bench_search.py --smoke --json        # CI: 5 evaluations, 1 seed

**Problems.** Branin (2-D, minimum 0.397887), Hartmann6 (6-D on [0, 1]^6, minimum
-3.32237) and Rosenbrock-10D (on [-5, 10]^10, minimum 0 at (1, ..., 1)): the best value
after ``--evals`` evaluations (100), over ``--seeds`` seeds (10). And one real task:
HistGradientBoostingClassifier on sklearn's digits (1,797 8x8 images, 10 classes), the
mean accuracy of a stratified 5-fold cross-validation (the folds fixed for every trial),
maximised over ``--digits-trials`` trials (50) and ``--digits-seeds`` seeds (5), in a
6-parameter space (``learning_rate`` and ``l2_regularization`` on a log scale,
``max_iter``, ``max_leaf_nodes``, ``min_samples_leaf``, ``max_features``); the slow part:
15 runs of 50 five-fold fits take well over an hour on a shared 2-core machine
(``--skip-digits``, ``--first-seed`` and ``--progress`` help run it in pieces). Each fit runs
on one thread (OpenMP threads spin and starve on a shared 2-core machine: a 5-fold fit
took 30x longer with two).

**mlrig** strategies are driven as a sweep drives them, through the ask/tell contract:
``load_backend("search", name).from_options({}, ...)``, ``start(space, direction, seed,
parallelism=1, budget=N)``, then per trial ``ask()``, ``save()``, the evaluation,
``tell()``, ``save()``; ``ms/trial`` is the strategy's own time per trial (ask + tell +
both saves: the persistence a sweep pays), ``state`` the size of the last saved state
and ``restore`` the time to restore it into a fresh instance.

**Optuna** (``optuna==5.0.0`` in its own virtual environment under
``~/.cache/mlrig-bench/optuna``, made the first time by
:func:`mlrig.testing.peer_venv.peer_python`): ``TPESampler(seed=seed)``, which is what
``optuna.create_study()`` uses by default, driven through Optuna's ask/tell API in a
subprocess that only proposes: it reads ``ask``/``tell`` lines on stdin and answers JSON.
Every objective is evaluated by this process for every strategy (one evaluator, the same
code and library versions for all). Optuna's ``ms/trial`` is its own time per ask + tell
measured inside its process (in memory, nothing saved).

**Figures.** Per problem and strategy: the median over the seeds of the best value found,
its interquartile range (p75 - p25), and ``wins``: on how many seeds that strategy found
the best value of the three (ties count for each). The goal (issue 12): NGOpt's median at
least as good as TPE's on 3 of the 4 problems. Runs are spread over ``--jobs`` processes
(2), each running one (problem, strategy, seed) at a time; the machine's other load
shows in the timings (``ms/trial``), not in the values found, which depend only on the
seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

OPTUNA_REQUIREMENT = "optuna==5.0.0"
STRATEGIES = ("nevergrad", "random", "optuna")
LABELS = {"nevergrad": "mlrig nevergrad (NGOpt)", "random": "mlrig random", "optuna": "Optuna TPE"}
GOAL_WINS = 3


# --- the test functions ------------------------------------------------------------------


def branin(p: dict[str, float]) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c = 5.1 / (4 * math.pi**2), 5 / math.pi
    r, s, t = 6.0, 10.0, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


_H_ALPHA = (1.0, 1.2, 3.0, 3.2)
_H_A = (
    (10, 3, 17, 3.5, 1.7, 8),
    (0.05, 10, 17, 0.1, 8, 14),
    (3, 3.5, 1.7, 10, 17, 8),
    (17, 8, 0.05, 10, 0.1, 14),
)
_H_P = (
    (1312, 1696, 5569, 124, 8283, 5886),
    (2329, 4135, 8307, 3736, 1004, 9991),
    (2348, 1451, 3522, 2883, 3047, 6650),
    (4047, 8828, 8732, 5743, 1091, 381),
)


def hartmann6(p: dict[str, float]) -> float:
    x = [p[f"x{j}"] for j in range(6)]
    total = 0.0
    for alpha, a, pp in zip(_H_ALPHA, _H_A, _H_P, strict=True):
        inner = sum(a[j] * (x[j] - pp[j] * 1e-4) ** 2 for j in range(6))
        total += alpha * math.exp(-inner)
    return -total


def rosenbrock(p: dict[str, float]) -> float:
    x = [p[f"x{j}"] for j in range(len(p))]
    return sum(100 * (x[j + 1] - x[j] ** 2) ** 2 + (1 - x[j]) ** 2 for j in range(len(x) - 1))


def _box(names: list[str], low: float, high: float) -> dict[str, Any]:
    return {n: {"type": "float", "low": low, "high": high} for n in names}


#: name -> (space, objective, direction, known optimum, where it is)
FUNCTIONS: dict[str, dict[str, Any]] = {
    "branin": {
        "space": {
            "x1": {"type": "float", "low": -5.0, "high": 10.0},
            "x2": {"type": "float", "low": 0.0, "high": 15.0},
        },
        "fn": branin,
        "optimum": 0.397887,
        "argmin": [{"x1": -math.pi, "x2": 12.275}, {"x1": math.pi, "x2": 2.275}],
    },
    "hartmann6": {
        "space": _box([f"x{j}" for j in range(6)], 0.0, 1.0),
        "fn": hartmann6,
        "optimum": -3.32237,
        "argmin": [
            dict(
                zip(
                    [f"x{j}" for j in range(6)],
                    (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573),
                    strict=True,
                )
            )
        ],
    },
    "rosenbrock10": {
        "space": _box([f"x{j}" for j in range(10)], -5.0, 10.0),
        "fn": rosenbrock,
        "optimum": 0.0,
        "argmin": [{f"x{j}": 1.0 for j in range(10)}],
    },
}


# --- the real task: HistGradientBoostingClassifier on digits -------------------------------

DIGITS_SPACE: dict[str, Any] = {
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
    "max_iter": {"type": "int", "low": 10, "high": 60},
    "max_leaf_nodes": {"type": "int", "low": 4, "high": 32, "log": True},
    "min_samples_leaf": {"type": "int", "low": 2, "high": 64, "log": True},
    "l2_regularization": {"type": "float", "low": 1e-6, "high": 10.0, "log": True},
    "max_features": {"type": "float", "low": 0.2, "high": 1.0},
}
_DIGITS: dict[str, Any] = {}


def digits_accuracy(params: dict[str, Any]) -> float:
    """Mean 5-fold accuracy of HistGradientBoostingClassifier(**params) on digits."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from threadpoolctl import threadpool_limits

    if not _DIGITS:
        from sklearn.datasets import load_digits

        _DIGITS["xy"] = load_digits(return_X_y=True)
        _DIGITS["cv"] = StratifiedKFold(5, shuffle=True, random_state=0)
    x, y = _DIGITS["xy"]
    model = HistGradientBoostingClassifier(**params, early_stopping=False, random_state=0)
    with threadpool_limits(1):
        return float(cross_val_score(model, x, y, cv=_DIGITS["cv"], n_jobs=1).mean())


def problems(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The problems of this run, each with its space, objective, direction and size."""
    chosen = []
    for name in args.functions:
        f = FUNCTIONS[name]
        chosen.append(
            {
                "name": name,
                "space": f["space"],
                "direction": "minimize",
                "evals": args.evals,
                "seeds": args.seeds,
                "optimum": f["optimum"],
            }
        )
    if not args.skip_digits:
        chosen.append(
            {
                "name": "digits_hgb",
                "space": DIGITS_SPACE,
                "direction": "maximize",
                "evals": args.digits_trials,
                "seeds": args.digits_seeds,
                "optimum": None,
            }
        )
    return chosen


def objective(problem: str) -> Callable[[dict[str, Any]], float]:
    return digits_accuracy if problem == "digits_hgb" else FUNCTIONS[problem]["fn"]


# --- Optuna's side: a proposer in its own environment -------------------------------------


def optuna_proposer() -> None:
    """Runs in Optuna's environment: answer ``start``/``ask``/``tell`` lines with JSON."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = space = None
    trials: dict[int, Any] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        started = time.perf_counter()
        if msg["op"] == "start":
            space = msg["space"]
            sampler = optuna.samplers.TPESampler(seed=msg["seed"])
            study = optuna.create_study(direction=msg["direction"], sampler=sampler)
            trials.clear()
            answer: dict[str, Any] = {"version": optuna.__version__, "sampler": "TPESampler"}
        elif msg["op"] == "ask":
            trial = study.ask()
            params = {}
            for name, p in space.items():
                if p["type"] == "float":
                    params[name] = trial.suggest_float(
                        name, p["low"], p["high"], log=p.get("log", False), step=p.get("step")
                    )
                elif p["type"] == "int":
                    params[name] = trial.suggest_int(
                        name, p["low"], p["high"], log=p.get("log", False), step=p.get("step", 1)
                    )
                elif p["type"] == "choice":
                    params[name] = trial.suggest_categorical(name, p["options"])
                else:
                    msg_ = f"the Optuna side does not map {p['type']!r} parameters"
                    raise SystemExit(msg_)
            trials[trial.number] = trial
            answer = {"number": trial.number, "params": params}
        elif msg["op"] == "tell":
            study.tell(trials.pop(msg["number"]), msg["value"])
            answer = {}
        else:
            raise SystemExit(f"unknown op {msg['op']!r}")
        answer["ms"] = (time.perf_counter() - started) * 1e3
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


class OptunaPeer:
    """The proposer subprocess, one request line and one answer line at a time."""

    def __init__(self, python: Path) -> None:
        from mlrig.testing.peer_venv import peer_env

        self.proc = subprocess.Popen(
            [str(python), __file__, "--optuna-proposer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=peer_env(python),
        )

    def call(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the Optuna proposer exited ({self.proc.wait()}) on {msg['op']}")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def optuna_python(*, install: bool) -> Path | None:
    """Optuna's environment (made the first time when ``install``; else only if cached)."""
    import importlib.metadata

    from mlrig.testing.peer_venv import cache_root, peer_python, venv_ready

    requirements = [OPTUNA_REQUIREMENT, f"numpy=={importlib.metadata.version('numpy')}"]
    if not install and not venv_ready(cache_root() / "optuna", requirements):
        return None
    return peer_python("optuna", requirements)


# --- one run: a strategy, a problem, a seed ------------------------------------------------


def _better(direction: str) -> Callable[[float, float], bool]:
    return (lambda a, b: a < b) if direction == "minimize" else (lambda a, b: a > b)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` (problem, strategy, seed, evals...) to its end; the best value and costs."""
    problem, strategy, seed = job["problem"], job["strategy"], job["seed"]
    fn, direction, evals = objective(problem), job["direction"], job["evals"]
    better = _better(direction)
    best: float | None = None
    curve: list[float] = []
    costs: list[float] = []
    evaluated = 0.0
    extra: dict[str, Any] = {}
    started = time.perf_counter()
    if strategy == "optuna":
        peer = OptunaPeer(Path(job["optuna_python"]))
        try:
            extra |= peer.call(op="start", space=job["space"], direction=direction, seed=seed)
            extra.pop("ms")
            for _ in range(evals):
                asked = peer.call(op="ask")
                t = time.perf_counter()
                value = fn(asked["params"])
                evaluated += time.perf_counter() - t
                told = peer.call(op="tell", number=asked["number"], value=value)
                costs.append(asked["ms"] + told["ms"])
                best = value if best is None or better(value, best) else best
                curve.append(best)
        finally:
            peer.close()
    else:
        from mlrig.backends import load_backend
        from mlrig.search.space import SearchSpace

        cls = load_backend("search", strategy)
        instance = cls.from_options({}, where=f"search.{strategy}")
        space = SearchSpace.from_dict(job["space"])
        instance.start(space, direction=direction, seed=seed, parallelism=1, budget=evals)
        state = instance.save()
        for _ in range(evals):
            t = time.perf_counter()
            trial = instance.ask()
            assert trial is not None, f"{strategy} ran out of points"
            state = instance.save()
            cost = time.perf_counter() - t
            t = time.perf_counter()
            value = fn(trial.params)
            evaluated += time.perf_counter() - t
            t = time.perf_counter()
            instance.tell(trial, value)
            state = instance.save()
            costs.append((cost + time.perf_counter() - t) * 1e3)
            best = value if best is None or better(value, best) else best
            curve.append(best)
        t = time.perf_counter()
        cls.from_options({}, where=f"search.{strategy}").restore(state)
        extra["restore_ms"] = (time.perf_counter() - t) * 1e3
        extra["state_bytes"] = len(state)
        extra["describe"] = instance.describe()
    return {
        "problem": problem,
        "strategy": strategy,
        "seed": seed,
        "evals": evals,
        "best": best,
        "curve": curve,
        "ms_per_trial": statistics.median(costs),
        "ms_per_trial_max": max(costs),
        "evaluation_s": evaluated,
        "wall_s": time.perf_counter() - started,
        **extra,
    }


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    from _common import percentile

    return percentile(values, 25), percentile(values, 50), percentile(values, 75)


def aggregate(problem: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per strategy: median best, IQR, wins over the seeds, costs."""
    better = _better(problem["direction"])
    by_seed: dict[int, dict[str, float]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["strategy"]] = r["best"]
    rows = []
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == strategy]
        bests = [r["best"] for r in mine]
        q1, median, q3 = _quartiles(bests)
        wins = 0
        for values in by_seed.values():
            top = values[strategy]
            wins += all(not better(v, top) for v in values.values())
        row = {
            "problem": problem["name"],
            "strategy": strategy,
            "label": LABELS[strategy],
            "direction": problem["direction"],
            "evals": problem["evals"],
            "seeds": len(mine),
            "median_best": median,
            "p25_best": q1,
            "p75_best": q3,
            "iqr": q3 - q1,
            "wins": wins,
            "ms_per_trial": statistics.median(r["ms_per_trial"] for r in mine),
            "evaluation_s": statistics.median(r["evaluation_s"] for r in mine),
            "median_curve": [
                statistics.median(r["curve"][i] for r in mine) for i in range(problem["evals"])
            ],
        }
        if problem["optimum"] is not None:
            row["optimum"] = problem["optimum"]
            row["median_gap"] = median - problem["optimum"]
        for key in ("state_bytes", "restore_ms"):
            if key in mine[0]:
                row[key] = statistics.median(r[key] for r in mine)
        if "version" in mine[0]:
            row["version"] = mine[0]["version"]
        selected = sorted({str(r.get("describe", {}).get("selected")) for r in mine} - {"None"})
        if selected:
            row["selected"] = selected  # the optimizer NGOpt chose
        row["distinct_bests"] = len(set(bests))
        rows.append(row)
    return rows


def goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """NGOpt's median at least as good as TPE's, per problem, and on how many."""
    verdicts = []
    for name in dict.fromkeys(r["problem"] for r in rows):
        mine = {r["strategy"]: r for r in rows if r["problem"] == name}
        if "nevergrad" not in mine or "optuna" not in mine:
            continue
        ng, tpe = mine["nevergrad"]["median_best"], mine["optuna"]["median_best"]
        ok = ng <= tpe if mine["nevergrad"]["direction"] == "minimize" else ng >= tpe
        verdicts.append({"problem": name, "nevergrad": ng, "optuna": tpe, "at_least_as_good": ok})
    good = sum(v["at_least_as_good"] for v in verdicts)
    return {
        "goal": f"NGOpt at least as good as Optuna TPE on {GOAL_WINS} of 4 problems",
        "problems": verdicts,
        "at_least_as_good": good,
        "compared": len(verdicts),
        "met": len(verdicts) == 4 and good >= GOAL_WINS,
    }


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.3e}"


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{'problem':<13} {'strategy':<24} {'median best':>12} {'IQR':>10} {'wins':>6} "
        f"{'ms/trial':>9} {'state':>8} {'restore':>8}",
        "-" * 96,
    ]
    for r in report["rows"]:
        state = f"{r['state_bytes'] / 1024:.1f}K" if "state_bytes" in r else "-"
        restore = f"{r['restore_ms']:.1f}ms" if "restore_ms" in r else "-"
        lines.append(
            f"{r['problem']:<13} {r['label']:<24} {_fmt(r['median_best']):>12} "
            f"{_fmt(r['iqr']):>10} {r['wins']:>3}/{r['seeds']:<2} {r['ms_per_trial']:>9.2f} "
            f"{state:>8} {restore:>8}"
        )
    for r in report["rows"]:
        if "selected" in r:
            lines.append(
                f"{r['problem']}: NGOpt chose {', '.join(r['selected'])}; "
                f"{r['distinct_bests']} distinct best value(s) over {r['seeds']} seeds"
            )
    g = report["goal"]
    for v in g["problems"]:
        verdict = "yes" if v["at_least_as_good"] else "no"
        lines.append(
            f"{v['problem']}: NGOpt {_fmt(v['nevergrad'])} vs TPE {_fmt(v['optuna'])}: {verdict}"
        )
    if g["compared"] == 4:
        lines.append(
            f"goal ({g['goal']}): {'met' if g['met'] else 'MISSED'} ({g['at_least_as_good']} of 4)"
        )
    elif g["compared"]:
        lines.append(
            f"goal ({g['goal']}): not judged, {g['compared']} of 4 problems in this run "
            f"(NGOpt at least as good on {g['at_least_as_good']})"
        )
    for s in report["skipped"]:
        lines.append(f"skipped {s['strategy']}: {s['reason']}")
    return "\n".join(lines)


def _jobs(
    chosen: list[dict[str, Any]], strategies: list[str], peer: Path | None, first_seed: int = 0
) -> Iterator[dict[str, Any]]:
    for problem in chosen:
        for seed in range(first_seed, first_seed + problem["seeds"]):
            for strategy in strategies:
                yield {
                    "problem": problem["name"],
                    "space": problem["space"],
                    "direction": problem["direction"],
                    "evals": problem["evals"],
                    "strategy": strategy,
                    "seed": seed,
                    "optuna_python": str(peer) if peer else None,
                }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evals", type=int, default=100, help="per run of a test function")
    parser.add_argument("--seeds", type=int, default=10, help="per test function")
    parser.add_argument("--functions", default=",".join(FUNCTIONS), help="comma-separated")
    parser.add_argument("--digits-trials", type=int, default=50)
    parser.add_argument("--digits-seeds", type=int, default=5)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ..."
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (processes)")
    parser.add_argument(
        "--smoke", action="store_true", help="CI: 5 evaluations, 1 seed, no digits, no install"
    )
    parser.add_argument(
        "--progress", type=Path, help="append each finished run to this file (JSON lines)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    parser.add_argument("--optuna-proposer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.functions = [f for f in args.functions.split(",") if f]
    args.strategies = [s for s in args.strategies.split(",") if s]
    if unknown := set(args.functions) - set(FUNCTIONS):
        parser.error(f"unknown function {sorted(unknown)}: use {', '.join(FUNCTIONS)}")
    if unknown := set(args.strategies) - set(STRATEGIES):
        parser.error(f"unknown strategy {sorted(unknown)}: use {', '.join(STRATEGIES)}")
    if args.smoke:
        args.evals, args.seeds, args.skip_digits, args.jobs = 5, 1, True, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.optuna_proposer:
        optuna_proposer()
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    strategies, skipped = list(args.strategies), []
    peer = None
    if "optuna" in strategies:
        peer = optuna_python(install=not args.smoke)
        if peer is None:
            strategies.remove("optuna")
            skipped.append({"strategy": "optuna", "reason": "--smoke installs no environment"})
    chosen = problems(args)
    jobs = list(_jobs(chosen, strategies, peer, args.first_seed))
    started = time.perf_counter()
    runs = []
    with contextlib.ExitStack() as stack:
        done: Iterator[dict[str, Any]] = map(run_one, jobs)
        if args.jobs > 1:
            done = stack.enter_context(ProcessPoolExecutor(args.jobs)).map(run_one, jobs)
        progress = stack.enter_context(args.progress.open("a")) if args.progress else None
        for run in done:
            runs.append(run)
            if progress is not None:
                progress.write(json.dumps(run) + "\n")
                progress.flush()
    rows = [
        row for p in chosen for row in aggregate(p, [r for r in runs if r["problem"] == p["name"]])
    ]
    report = {
        "rows": rows,
        "goal": goal(rows),
        "skipped": skipped,
        "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
        "wall_s": time.perf_counter() - started,
        "jobs": args.jobs,
        "cpus": len(os.sched_getaffinity(0)),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
        print(f"{len(runs)} runs in {report['wall_s']:.0f} s on {args.jobs} processes")
    return 1 if args.check and not report["goal"]["met"] else 0


if __name__ == "__main__":
    sys.exit(main())
