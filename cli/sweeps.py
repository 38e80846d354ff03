"""``mlrig sweeps``: hyperparameter sweeps: create (and watch), list, show, stop."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from mlrig.cli.context import audit_cli, get_platform, require_writer
from mlrig.cli.experiments import NO_WORKER_SECONDS, WorkerWatch, elapsed_clock
from mlrig.cli.output import json_option, print_json, print_table, show_result

STATUSES = ["running", "completed", "failed", "cancelled"]
FINAL = frozenset({"completed", "failed", "cancelled"})
TRIAL_STATES = ["queued", "running", "completed", "failed", "pruned", "cancelled"]
POLL_SECONDS = 0.5
SPARKS = "▁▂▃▄▅▆▇█"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``3600``, ``90s``, ``30m``, ``2h``, ``1h30m``, ``1d`` to whole seconds (at least 1)."""
    raw = text.strip().lower().replace(" ", "")
    if raw.isdigit():
        seconds = float(raw)
    else:
        pieces = _DURATION.findall(raw)
        if not pieces or "".join(n + u for n, u in pieces) != raw:
            msg = f"{text!r}: use seconds (3600) or a duration like 90s, 30m, 2h, 1h30m, 1d"
            raise click.BadParameter(msg, param_hint="'--max-time'")
        seconds = sum(float(n) * _UNITS[u] for n, u in pieces)
    if seconds < 1:
        raise click.BadParameter(f"{text!r}: at least 1 second", param_hint="'--max-time'")
    return round(seconds)


def _value(text: str) -> Any:
    """A JSON value (numbers, true, lists...) or else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(values: tuple[str, ...], option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            msg = f"{item!r}: use KEY=VALUE (VALUE is parsed as JSON when it can be)"
            raise click.BadParameter(msg, param_hint=f"'{option}'")
        out[key.strip()] = _value(value)
    return out


def read_space(path: Path) -> dict[str, Any]:
    """The space of a ``.json``, ``.toml`` or ``.yaml``/``.yml`` file, checked here (an
    error names the file and the parameter) and sent in its canonical form."""
    from mlrig.errors import ValidationError
    from mlrig.search.space import SearchSpace

    try:
        return SearchSpace.load(path).to_dict()
    except ValidationError as exc:
        raise click.BadParameter(" ".join(exc.message.split()), param_hint="'--space'") from None


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params_text(params: dict[str, Any], width: int = 60) -> str:
    text = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def _done(view: dict[str, Any]) -> int:
    counts = view.get("trials") or {}
    return sum(counts.get(s, 0) for s in ("completed", "failed", "pruned", "cancelled"))


def _best_text(view: dict[str, Any]) -> str:
    best = view.get("best")
    if not best:
        return "no best yet"
    return f"best {view['objective']}={_fmt(best['value'])} (trial {best['number']})"


@click.group()
def sweeps() -> None:
    """Hyperparameter sweeps: many trials of a trainer, a search strategy picking the
    params (docs/sweeps.md)."""


@sweeps.command("create")
@click.argument("name")
@click.option("--trainer", required=True, help="Trainer backend (see `mlrig plugins list`).")
@click.option(
    "--space",
    "space_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Search space file: .json, .toml or .yaml (docs/sweeps.md).",
)
@click.option("--objective", required=True, help="Metric to optimise, e.g. val_accuracy.")
@click.option(
    "--maximize/--minimize", default=False, help="Direction of the objective [default: minimize]."
)
@click.option(
    "--kind",
    type=click.Choice(["train", "validation", "test"]),
    default="validation",
    show_default=True,
    help="Which kind of the objective metric counts.",
)
@click.option(
    "--strategy", help="Search strategy: nevergrad, random, grid... (default: [search] backend)."
)
@click.option(
    "--option",
    "options",
    multiple=True,
    help="Strategy option KEY=VALUE (JSON-parsed), repeatable, e.g. optimizer=NGOpt.",
)
@click.option("--trials", type=click.IntRange(1), default=20, show_default=True, help="Trials.")
@click.option(
    "--parallel", type=click.IntRange(1), default=1, show_default=True, help="Trials at once."
)
@click.option("--max-time", help="Wall-time budget: seconds (3600) or 90s, 30m, 2h, 1h30m.")
@click.option(
    "--prune",
    type=click.Choice(["median", "asha"]),
    help="Stop unpromising trials early: median stopping rule or ASHA.",
)
@click.option(
    "--prune-option",
    "prune_options",
    multiple=True,
    help="Pruner setting KEY=VALUE, repeatable (e.g. warmup_steps=5, max_resource=50).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    help="Base hyperparameter KEY=VALUE (JSON-parsed) every trial gets, repeatable.",
)
@click.option("--data", "data_uri", help="Dataset: CSV/parquet path or URL.")
@click.option("--target", help="The dataset's label column.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), help="Default: random (recorded).")
@click.option("--model-name", help="Registry model for the best trial's model (default: NAME).")
@click.option("--description")
@click.option("--dry-run", is_flag=True, help="Validate and show what would run; create nothing.")
@click.option("--wait", is_flag=True, help="Show progress until the sweep ends.")
@json_option
def create(
    name: str,
    trainer: str,
    space_file: Path,
    objective: str,
    maximize: bool,
    kind: str,
    strategy: str | None,
    options: tuple[str, ...],
    trials: int,
    parallel: int,
    max_time: str | None,
    prune: str | None,
    prune_options: tuple[str, ...],
    params: tuple[str, ...],
    data_uri: str | None,
    target: str | None,
    seed: int | None,
    model_name: str | None,
    description: str | None,
    dry_run: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Create sweep NAME and queue its first trials (a worker runs them: `mlrig worker`,
    or `mlrig server`, which runs one)."""
    if target and not data_uri:
        raise click.BadParameter("--target needs --data")
    if prune_options and not prune:
        raise click.BadParameter("--prune-option needs --prune")
    if wait and dry_run:
        raise click.BadParameter("--wait and --dry-run exclude each other")
    if data_uri and "://" not in data_uri and Path(data_uri).exists():
        data_uri = str(Path(data_uri).resolve())  # jobs run in their own folder
    fields: dict[str, Any] = {
        "name": name,
        "trainer": trainer,
        "space": read_space(space_file),
        "objective": objective,
        "direction": "maximize" if maximize else "minimize",
        "objective_kind": kind,
        "strategy": strategy,
        "strategy_options": _pairs(options, "--option") or None,
        "max_trials": trials,
        "parallelism": parallel,
        "max_seconds": parse_duration(max_time) if max_time else None,
        "pruner": {"rule": prune, **_pairs(prune_options, "--prune-option")} if prune else None,
        "hyperparameters": _pairs(params, "--param"),
        "dataset": {"uri": data_uri, "target": target} if data_uri else None,
        "seed": seed,
        "model_name": model_name,
        "description": description,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    service = get_platform().sweeps
    actor = require_writer()
    if dry_run or strategy == "grid":  # a grid's count before anything starts
        planned = service.create(actor=actor, dry_run=True, **fields)
        if planned.get("strategy") == "grid":
            click.echo(_grid_line(planned), err=as_json)
        if dry_run:
            _dry_run_summary(planned, as_json)
            return
    view = service.create(actor=actor, **fields)
    audit_cli("create_sweep", resource_type="sweeps", resource_id=view["id"])
    if strategy is None and view.get("strategy") == "grid":  # the configured default
        click.echo(_grid_line(view), err=as_json)
    if wait:
        if not as_json:
            click.echo(_created_line(view))
        _wait_and_exit(service, view["id"], as_json)
        return
    show_result(view, as_json, _created_line(view))


def _grid_line(view: dict[str, Any]) -> str:
    points = view.get("grid_points") or view["planned_trials"]
    line = f"grid: {points:,} points"
    if view["planned_trials"] < points:
        line += f" (--trials {view['max_trials']}: the first {view['planned_trials']:,} run)"
    return line


def _created_line(view: dict[str, Any]) -> str:
    return (
        f"created sweep {view['name']!r} ({view['id']}): {view['strategy']}, "
        f"{view['planned_trials']} trials, {view['parallelism']} at a time, "
        f"{view['direction']} {view['objective']}; {view['status']}"
    )


def _dry_run_summary(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(view)
        return
    click.echo(
        f"dry run: sweep {view['name']!r} would run {view['planned_trials']} trials of "
        f"{view['trainer']} ({view['strategy']}, {view['parallelism']} at a time), "
        f"{view['direction']} {view['objective']} ({view['objective_kind']}); nothing created"
    )


def _sweep_watch() -> Any:
    """The watch of a sweep's wait: while it has trials to run."""
    return WorkerWatch(
        get_platform().experiments.queue,
        waiting=lambda view: view["status"] not in FINAL,
        describe=lambda view: (
            f"sweep {view['name']} is {view['status']} with {_done(view)}/"
            f"{view['planned_trials']} trials done",
            "the sweep goes on when a worker takes its trials",
        ),
        grace_seconds=NO_WORKER_SECONDS,
    )


def _progress(view: dict[str, Any], since: float) -> str:
    counts = view.get("trials") or {}
    started = view.get("started_at")
    begin = datetime.fromisoformat(started).timestamp() if started else since
    elapsed = int(max(0.0, datetime.now(timezone.utc).timestamp() - begin))
    parts = [
        f"{view['name']}: {view['status']}",
        f"trials {_done(view)}/{view['planned_trials']} done, {counts.get('running', 0)} running",
    ]
    if counts.get("failed") or counts.get("pruned"):
        parts.append(f"{counts.get('failed', 0)} failed, {counts.get('pruned', 0)} pruned")
    parts.append(_best_text(view))
    parts.append(elapsed_clock(elapsed))
    return " | ".join(parts)


def _watch(service: Any, key: str, *, quiet: bool) -> dict[str, Any]:
    """Poll until the sweep ends, with a live progress line on stderr."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    since = time.time()
    view = service.get(key)
    workers = _sweep_watch()
    console = Console(stderr=True, quiet=quiet)
    with Live(Text(_progress(view, since)), console=console, refresh_per_second=4) as live:
        while view["status"] not in FINAL:
            time.sleep(POLL_SECONDS)
            view = service.get(key)
            live.update(Text(_progress(view, since)))
            try:
                workers.check(view)
            except SystemExit:
                live.stop()
                raise
    if not console.is_terminal:
        console.line()
    return view


def _wait_and_exit(service: Any, key: str, as_json: bool) -> None:
    """Watch until the sweep ends; exit 1 with its status detail unless it completed."""
    final = _watch(service, key, quiet=as_json)
    if as_json:
        print_json(final)
    elif final["status"] == "completed":
        best = final.get("best")
        params = f" with {_params_text(best['params'])}" if best else ""
        click.echo(f"completed: {_done(final)} trials, {_best_text(final)}{params}")
        click.echo(f"see: mlrig sweeps show {final['name']}")
    if final["status"] != "completed":
        detail = " ".join(str(final.get("status_detail") or "no detail").split())
        click.echo(f"{final['status']}: {detail}", err=True)
        sys.exit(1)


@sweeps.command("list")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def list_(status: str | None, limit: int, as_json: bool) -> None:
    """List sweeps, newest first."""
    rows = get_platform().sweeps.list(status=status, limit=limit)
    if as_json:
        print_json(rows)
        return
    print_table(
        "sweeps",
        ["name", "status", "strategy", "objective", "trials", "best", "created", "id"],
        (
            [
                r["name"],
                r["status"],
                r["strategy"],
                f"{r['objective']} ({'max' if r['direction'] == 'maximize' else 'min'})",
                f"{_done(r)}/{r['planned_trials']}",
                _fmt(r["best"]["value"]) if r.get("best") else "",
                (r["created_at"] or "")[:19],
                r["id"],
            ]
            for r in rows
        ),
    )


def sparkline(values: list[float]) -> str:
    """``values`` as a line of block characters, lowest to highest (at most 60, the last)."""
    shown = [v for v in values if v == v][-60:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    if high == low:
        return SPARKS[0] * len(shown)
    top = len(SPARKS) - 1
    return "".join(SPARKS[round((v - low) / (high - low) * top)] for v in shown)


def _constants(space: dict[str, Any]) -> dict[str, Any]:
    """The space's constants (the same in every trial: left out of the trials table)."""
    return {
        name: spec["value"]
        for name, spec in space.items()
        if isinstance(spec, dict) and spec.get("type") == "const" and not spec.get("when")
    }


@sweeps.command("show")
@click.argument("sweep")
@json_option
def show(sweep: str, as_json: bool) -> None:
    """Show a sweep (id or name): settings, progress, every trial (best marked *),
    parameter importances and the best-so-far curve."""
    service = get_platform().sweeps
    view = service.get(sweep)
    results = service.results(view["id"])
    if as_json:
        print_json({"sweep": view, "results": results})
        return
    counts = view["trials"]
    states = ", ".join(f"{counts[s]} {s}" for s in TRIAL_STATES if counts.get(s))
    lines = [
        f"sweep {view['name']} ({view['id']}): {view['status']}"
        + (f" ({view['status_detail']})" if view.get("status_detail") else ""),
        f"trainer {view['trainer']}, strategy {view['strategy']}, "
        f"{view['direction']} {view['objective']} ({view['objective_kind']})",
        f"trials: {_done(view)}/{view['planned_trials']} done ({states or 'none yet'}), "
        f"{view['parallelism']} at a time"
        + (f", budget {view['max_seconds']} s" if view.get("max_seconds") else ""),
    ]
    if view.get("pruner"):
        lines.append(f"pruner: {_params_text(view['pruner'], 100)}")
    best = results.get("best")
    if best:
        lines.append(
            f"best: trial {best['number']}, {view['objective']}={_fmt(best['value'])}, "
            f"{_params_text(best['params'], 100)}"
        )
    if view.get("model_version_id"):
        lines.append(f"registered model version: {view['model_version_id']}")
    for line in lines:
        click.echo(line)
    best_number = best["number"] if best else None
    constants = _constants(view.get("space") or {})
    details = any(t.get("detail") for t in results["trials"])
    rows = []
    for t in results["trials"]:
        row = [
            f"{t['number']}{' *' if t['number'] == best_number else ''}",
            t["state"] + (f" (rung {t['rung']})" if t.get("rung") is not None else ""),
            _fmt(t["value"]),
            _params_text({k: v for k, v in t["params"].items() if k not in constants}),
            f"{t['duration_s']:.1f} s" if t.get("duration_s") is not None else "",
        ]
        if details:
            row.append(" ".join(str(t.get("detail") or "").split())[:60])
        rows.append(row)
    columns = ["#", "state", view["objective"], "params", "duration"]
    print_table("trials (* = best)", [*columns, "detail"] if details else columns, rows)
    if constants:
        click.echo(f"constants: {_params_text(constants, 100)}")
    found = results["importances"]
    if found["params"]:
        print_table(
            "parameter importances",
            ["parameter", "importance"],
            ([name, f"{score:.3f}"] for name, score in found["params"].items()),
        )
        click.echo(f"importances: {found['method']}")
    else:
        click.echo(f"importances: none yet ({found.get('reason') or 'no completed trials'})")
    curve = results["best_so_far"]
    if curve:
        click.echo(
            f"best so far: {sparkline([p['best'] for p in curve])} "
            f"{_fmt(curve[0]['best'])} -> {_fmt(curve[-1]['best'])} over {len(curve)} trials"
        )


@sweeps.command("stop")
@click.argument("sweep")
@json_option
def stop(sweep: str, as_json: bool) -> None:
    """Stop SWEEP now: its queued and running trials are cancelled."""
    actor = require_writer()
    view = get_platform().sweeps.stop(sweep, actor=actor)
    audit_cli("stop_sweep", resource_type="sweeps", resource_id=view["id"])
    show_result(
        view,
        as_json,
        f"{view['name']}: {view['status']} ({_done(view)} trials ended); {_best_text(view)}",
    )
