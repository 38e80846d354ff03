"""``mlrig experiments``: create, queue, watch and compare training runs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from mlrig.cli.context import audit_cli, get_platform, require_writer
from mlrig.cli.output import json_option, print_json, print_mapping, print_table, show_result

STATUSES = ["created", "queued", "running", "completed", "failed", "cancelled"]
FINAL = frozenset({"completed", "failed", "cancelled"})
POLL_SECONDS = 0.5
#: a waiting command gives up, saying so, after this long without any live worker
NO_WORKER_SECONDS = 5.0
#: the exit code of a waiting command that found no live worker (docs/experiments.md)
EXIT_NO_WORKER = 3


class WorkerWatch:
    """Notices when no worker is alive while a wait depends on one (a job queued or
    running, a sweep with trials to run): nothing would ever finish it, so the wait ends.

    :param queue: the job queue (its ``live_workers``).
    :param waiting: whether ``view`` still needs a worker.
    :param describe: ``view`` -> (what waits, what happens once a worker comes), the two
        ends of the one-line message.
    """

    def __init__(
        self,
        queue: Any,
        *,
        waiting: Callable[[dict[str, Any]], bool],
        describe: Callable[[dict[str, Any]], tuple[str, str]],
        grace_seconds: float | None = None,
    ) -> None:
        self.queue = queue
        #: how long no worker may be alive before the wait ends (default NO_WORKER_SECONDS)
        self.grace_seconds = NO_WORKER_SECONDS if grace_seconds is None else grace_seconds
        self.waiting = waiting
        self.describe = describe
        self.missing_since: float | None = None
        self.checked_at = 0.0

    def check(self, view: dict[str, Any]) -> None:
        """Exit with :data:`EXIT_NO_WORKER` once no worker was alive for a while."""
        if not self.waiting(view):
            self.missing_since = None
            return
        now = time.monotonic()
        if now - self.checked_at < 1.0:
            return
        self.checked_at = now
        if self.queue.live_workers():
            self.missing_since = None
            return
        self.missing_since = self.missing_since or now
        if now - self.missing_since < self.grace_seconds:
            return
        what, then = self.describe(view)
        click.echo(
            f"{what}, but no worker is running (none has sent a heartbeat for "
            f"{self.grace_seconds:.0f} s): start one with `mlrig worker` (same config), or "
            f"`mlrig server`, which runs one; {then}",
            err=True,
        )
        sys.exit(EXIT_NO_WORKER)


def _job_watch(service: Any) -> WorkerWatch:
    """The watch of one experiment's wait: while it is queued or running."""
    return WorkerWatch(
        service.queue,
        waiting=lambda view: view["status"] in ("queued", "running"),
        describe=lambda view: (
            f"{view['name']} is {view['status']}",
            f"the experiment stays {view['status']} until a worker takes it",
        ),
    )


def elapsed_clock(seconds: int) -> str:
    """``H:MM:SS`` of a progress line."""
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _value(text: str) -> Any:
    """A JSON value (numbers, true, lists...) or else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _params(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"--param {item!r}: use KEY=VALUE (VALUE is parsed as JSON when it can be)"
            raise click.BadParameter(msg)
        out[key] = _value(value)
    return out


def parse_early_stopping(text: str | None) -> dict[str, Any] | None:
    """``monitor=val_loss,mode=min,patience=3,min_delta=0`` to a rule."""
    if not text:
        return None
    rule: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            msg = (
                f"--early-stopping: {item!r} is not KEY=VALUE; e.g. "
                "'monitor=val_loss,mode=min,patience=3,min_delta=0'"
            )
            raise click.BadParameter(msg)
        rule[key.strip()] = (
            value.strip() if key.strip() in ("monitor", "mode", "kind") else _value(value.strip())
        )
    return rule


def _fmt(value: Any) -> str:
    """A table cell: short numbers, and text that rich must not read as markup."""
    from rich.markup import escape

    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else escape(str(value))


@click.group()
def experiments() -> None:
    """Create, start, watch, compare and rerun training experiments."""


@experiments.command("create")
@click.argument("name")
@click.option("--trainer", required=True, help="Trainer backend (see `mlrig plugins list`).")
@click.option(
    "--param",
    "params",
    multiple=True,
    help="Hyperparameter KEY=VALUE (JSON-parsed: 0.1, true, [1,2]), repeatable.",
)
@click.option("--data", "data_uri", help="Dataset: CSV/parquet path or URL.")
@click.option("--target", help="The dataset's label column.")
@click.option("--cpus", type=click.IntRange(0), help="CPUs to reserve (default 1).")
@click.option("--gpus", type=click.IntRange(0), help="GPUs to reserve (default 0).")
@click.option("--memory-mb", type=click.IntRange(0), help="Memory limit in MiB (0: none).")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option(
    "--checkpoint-interval",
    type=click.IntRange(0),
    default=600,
    show_default=True,
    help="Seconds between automatic checkpoints.",
)
@click.option("--early-stopping", help="e.g. 'monitor=val_loss,mode=min,patience=3,min_delta=0'.")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), help="Default: random (recorded).")
@click.option("--model-name", help="Registry model the trainer registers (default: NAME).")
@click.option("--description")
@click.option("--start", is_flag=True, help="Queue it right away.")
@click.option("--wait", is_flag=True, help="With --start: show progress until it ends.")
@json_option
def create(
    name: str,
    trainer: str,
    params: tuple[str, ...],
    data_uri: str | None,
    target: str | None,
    cpus: int | None,
    gpus: int | None,
    memory_mb: int | None,
    priority: int,
    checkpoint_interval: int,
    early_stopping: str | None,
    max_attempts: int,
    seed: int | None,
    model_name: str | None,
    description: str | None,
    start: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Create experiment NAME (and queue it with --start)."""
    if wait and not start:
        raise click.BadParameter("--wait needs --start")
    if target and not data_uri:
        raise click.BadParameter("--target needs --data")
    resources = {
        k: v
        for k, v in {"cpus": cpus, "gpus": gpus, "memory_mb": memory_mb}.items()
        if v is not None
    }
    if data_uri and "://" not in data_uri and Path(data_uri).exists():
        data_uri = str(Path(data_uri).resolve())  # jobs run in their own folder
    view = get_platform().experiments.create(
        name=name,
        trainer=trainer,
        actor=require_writer(),
        description=description,
        hyperparameters=_params(params),
        dataset={"uri": data_uri, "target": target} if data_uri else None,
        resources=resources,
        priority=priority,
        checkpoint_interval_s=checkpoint_interval,
        early_stopping=parse_early_stopping(early_stopping),
        max_attempts=max_attempts,
        seed=seed,
        model_name=model_name,
        start=start,
    )
    audit_cli("create_experiment", resource_type="experiments", resource_id=view["id"])
    if wait:
        _wait_and_exit(get_platform().experiments, view["id"], as_json)
        return
    show_result(view, as_json, f"created experiment {name!r} ({view['id']}), {view['status']}")


@experiments.command("list")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--prefix", help="Names starting with this.")
@click.option("--trainer")
@click.option(
    "--origin",
    type=click.Choice(["engine", "tracking", "mlflow", "import", "sweep"]),
    help="Run by the engine, tracked from user code, by the MLflow client, imported, "
    "or a sweep (its trials: --parent SWEEP).",
)
@click.option("--group", help="Only the runs of this group (study).")
@click.option("--parent", help="Only the runs nested in this one (id or name).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def list_(
    status: str | None,
    prefix: str | None,
    trainer: str | None,
    origin: str | None,
    group: str | None,
    parent: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List experiments and tracked runs, newest first."""
    filters = {"origin": origin, "group": group, "parent": parent}
    rows = get_platform().experiments.list(
        status=status,
        name_prefix=prefix,
        trainer=trainer,
        limit=limit,
        **{k: v for k, v in filters.items() if v is not None},
    )
    if as_json:
        print_json(rows)
        return
    print_table(
        "experiments",
        ["name", "status", "origin", "group", "trainer", "attempts", "by", "created", "id"],
        (
            [
                _fmt(r["name"]),
                r["status"],
                r.get("origin", "engine"),
                _fmt(r.get("group") or ""),
                r["trainer"] or "",
                f"{r['attempts']}/{r['max_attempts']}" if r["trainer"] else "",
                r["created_by"],
                (r["created_at"] or "")[:19],
                r["id"],
            ]
            for r in rows
        ),
    )


@experiments.command("show")
@click.argument("experiment")
@json_option
def show(experiment: str, as_json: bool) -> None:
    """Show an experiment (id or name): settings, state, timeline, latest metrics."""
    view = get_platform().experiments.get(experiment)
    if as_json:
        print_json(view)
        return
    events, latest = view.pop("events"), view.pop("metrics")
    view.pop("model_id", None)  # deprecated twin of model_version_id (kept in --json)
    print_mapping(view)
    print_table(
        "metrics (last value)",
        ["metric", "value", "step", "epoch"],
        ([_fmt(k), _fmt(m["value"]), m["step"], m["epoch"]] for k, m in latest.items()),
    )
    _event_table(events)


def _event_table(events: list[dict[str, Any]]) -> None:
    print_table(
        "events",
        ["at", "from", "to", "detail"],
        ([(e["at"] or "")[:23], e["old"], e["new"], _fmt(e["detail"])] for e in events),
    )


@experiments.command("start")
@click.argument("experiment")
@click.option(
    "--wait", is_flag=True, help="Show live progress until it ends; exit 0 only when it completed."
)
@json_option
def start(experiment: str, wait: bool, as_json: bool) -> None:
    """Queue EXPERIMENT (created, failed or cancelled) for a worker to run."""
    from mlrig.errors import ConflictError

    service = get_platform().experiments
    require_writer()
    try:
        view = service.start(experiment)
    except ConflictError as exc:
        # --wait on a run that is already queued or running just watches it
        if not (wait and exc.details.get("status") in ("queued", "running")):
            raise
        _wait_and_exit(service, service.resolve(experiment), as_json)
        return
    audit_cli("start_experiment", resource_type="experiments", resource_id=view["id"])
    if not wait:
        show_result(view, as_json, f"queued {view['name']} ({view['id']})")
        return
    _wait_and_exit(service, view["id"], as_json)


def _wait_and_exit(service: Any, key: str, as_json: bool) -> None:
    """Watch until a final state; exit 1 with the status detail unless it completed."""
    final = _watch(service, key, quiet=as_json)
    if as_json:
        print_json(final)
    elif final["status"] == "completed":
        click.echo(" ".join(["completed", _metric_line(final["metrics"])]).strip())
    if final["status"] != "completed":
        detail = " ".join(str(final.get("status_detail") or "no detail").split())
        click.echo(f"{final['status']}: {detail}", err=True)
        sys.exit(1)


def _metric_line(latest: dict[str, Any], count: int = 4) -> str:
    return " ".join(f"{k}={_fmt(m['value'])}" for k, m in list(latest.items())[:count])


def _progress(view: dict[str, Any], since: float) -> str:
    latest = view.get("metrics") or {}
    steps = [m["step"] for m in latest.values() if m["step"] is not None]
    epochs = [m["epoch"] for m in latest.values() if m["epoch"] is not None]
    started = view.get("started_at")
    begin = datetime.fromisoformat(started).timestamp() if started else since
    elapsed = int(max(0.0, datetime.now(timezone.utc).timestamp() - begin))
    parts = [
        f"{view['name']}: {view['status']}",
        f"attempt {view['attempts']}/{view['max_attempts']}",
    ]
    if epochs:
        parts.append(f"epoch {max(epochs)}")
    if steps:
        parts.append(f"step {max(steps)}")
    if latest:
        parts.append(_metric_line(latest))
    parts.append(elapsed_clock(elapsed))
    return " | ".join(parts)


def _watch(service: Any, key: str, *, quiet: bool) -> dict[str, Any]:
    """Poll until a final state, with a live progress line on stderr."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    since = time.time()
    view = service.get(key)
    workers = _job_watch(service)
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
        console.line()  # end the last progress line before the verdict
    return view


@experiments.command("stop")
@click.argument("experiment")
@json_option
def stop(experiment: str, as_json: bool) -> None:
    """Stop EXPERIMENT: dequeue it, or end its running job within seconds."""
    require_writer()
    view = get_platform().experiments.stop(experiment)
    audit_cli("stop_experiment", resource_type="experiments", resource_id=view["id"])
    show_result(view, as_json, f"{view['name']}: {view['status']}")


@experiments.command("rerun")
@click.argument("experiment")
@json_option
def rerun(experiment: str, as_json: bool) -> None:
    """Queue an identical run of EXPERIMENT (same trainer, parameters, data, seed)."""
    view = get_platform().experiments.rerun(experiment, actor=require_writer())
    audit_cli("rerun_experiment", resource_type="experiments", resource_id=view["id"])
    show_result(view, as_json, f"queued {view['name']} ({view['id']}), seed {view['seed']}")


@experiments.command("metrics")
@click.argument("experiment")
@click.option("--name", help="Only this metric (a table of its points).")
@click.option("--kind", type=click.Choice(["train", "validation", "test"]))
@click.option(
    "--tail",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="With --name: how many of the last points to show.",
)
@json_option
def metrics(experiment: str, name: str | None, kind: str | None, tail: int, as_json: bool) -> None:
    """Show an experiment's metrics: a summary per metric, or the points of --name."""
    data = get_platform().experiments.metrics(experiment, name=name, kind=kind)
    if as_json:
        print_json(data)
        return
    history = data["metrics"]
    if name:
        series = history.get(name) or {
            "steps": [],
            "epochs": [],
            "kinds": [],
            "values": [],
            "times": [],
        }
        rows = list(
            zip(
                series["steps"],
                series["epochs"],
                series["kinds"],
                series["values"],
                series["times"],
                strict=True,
            )
        )[-tail:]
        print_table(
            _fmt(f"{name} (last {len(rows)} of {len(series['steps'])})"),
            ["step", "epoch", "kind", "value", "time"],
            ([s, e, k, _fmt(v), (t or "")[:23]] for s, e, k, v, t in rows),
        )
        return
    print_table(
        f"metrics ({data['count']} points)",
        ["metric", "kinds", "points", "last step", "last", "min", "max"],
        (
            [
                _fmt(n),
                ",".join(sorted({k or "-" for k in s["kinds"]})),
                len(s["values"]),
                s["steps"][-1],
                _fmt(s["values"][-1]),
                _fmt(min(s["values"])),
                _fmt(max(s["values"])),
            ]
            for n, s in history.items()
        ),
    )


@experiments.command("logs")
@click.argument("experiment")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until it ends.")
@click.option("--offset", type=click.IntRange(0), default=0, help="Start at this byte.")
def logs(experiment: str, follow: bool, offset: int) -> None:
    """Print the job's stdout/stderr (like tail -f with --follow)."""
    service = get_platform().experiments
    key = service.resolve(experiment)
    out = sys.stdout.buffer
    workers = _job_watch(service)
    name = experiment
    while True:
        state = service.status(key) if follow else None
        data, offset = service.read_logs(key, offset)
        if data:
            out.write(data)
            out.flush()
            continue
        if not follow or state in FINAL:
            return
        workers.check({"name": name, "status": state})
        time.sleep(POLL_SECONDS)


@experiments.command("events")
@click.argument("experiment")
@json_option
def events(experiment: str, as_json: bool) -> None:
    """Show the state changes of an experiment, with times and reasons."""
    rows = get_platform().experiments.events(experiment)
    if as_json:
        print_json(rows)
        return
    _event_table(rows)


@experiments.command("compare")
@click.argument("experiments_", metavar="EXPERIMENT...", nargs=-1, required=True)
@json_option
def compare(experiments_: tuple[str, ...], as_json: bool) -> None:
    """Compare experiments side by side: hyperparameters and last metric values."""
    data = get_platform().experiments.compare(list(experiments_))
    if as_json:
        print_json(data)
        return
    names = [e["name"] for e in data["experiments"]]
    rows = [
        [_fmt(f"{p}{' *' if p in data['differing'] else ''}"), *map(_fmt, values)]
        for p, values in data["hyperparameters"].items()
    ]
    rows += [[_fmt(f"{m} (last)"), *map(_fmt, values)] for m, values in data["metrics"].items()]
    rows.append(["status", *[e["status"] for e in data["experiments"]]])
    print_table("compare (* = differs)", ["", *map(_fmt, names)], rows)
