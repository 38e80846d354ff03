"""``mlrig features``: the feature store: entities, feature views, features, their values,
pushes, materialisation, training sets, and ``apply`` (everything from one file)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from mlrig.cli.context import audit_cli, get_platform, get_principal, get_state, require_writer
from mlrig.cli.output import json_option, print_json, print_table, show_result

FEATURE_TYPES = ["numerical", "categorical", "boolean", "text"]
FINAL = frozenset({"completed", "failed", "cancelled"})
POLL_SECONDS = 0.5


def _service() -> Any:
    return get_platform().features


def _can_read_pii() -> bool:
    """Whether the command's principal sees PII in the clear (a server decides itself)."""
    if get_state().remote:
        return True
    from mlrig.security.roles import Permission

    return get_principal().can(Permission.READ_PII)


def read_definition(path: Path) -> Any:
    """A ``.json``, ``.toml`` or ``.yaml``/``.yml`` file's content (one line on error)."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise click.BadParameter(f"{path}: {reason}") from None
    except Exception as exc:  # yaml's errors
        reason = " ".join(str(exc).split())
        raise click.BadParameter(f"{path}: {reason}") from None
    raise click.BadParameter(f"{path}: use a .json, .toml, .yaml or .yml file")


def read_frame(path: Path) -> Any:
    """A ``.csv`` or ``.parquet`` file as a pandas DataFrame."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - the features extra
        raise click.ClickException(
            "reading files needs pandas: pip install 'mlrig[features]'"
        ) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow: a broken file is the user's to fix
        raise click.BadParameter(f"{path}: {' '.join(str(exc).split())[:300]}") from None
    raise click.BadParameter(f"{path}: use a .csv or .parquet file")


def write_frame(frame: Any, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        raise click.BadParameter(f"{path}: use a .csv or .parquet output file")


def _features_text(view: dict[str, Any], width: int = 60) -> str:
    text = ", ".join(f["name"] for f in view.get("features", []))
    return text if len(text) <= width else text[: width - 1] + "…"


def _source_text(view: dict[str, Any]) -> str:
    source = view.get("source") or {}
    if view.get("kind") == "on_demand":
        return f"on_demand {view.get('function')}"
    if source.get("kind") == "file":
        return str(source.get("uri"))
    return str(source.get("kind", ""))


@click.group()
def features() -> None:
    """The feature store: entities, feature views and their features, online values,
    training sets, materialisation (docs/features.md)."""


# --- entities -------------------------------------------------------------------------------


@features.group()
def entities() -> None:
    """Entities: what features describe, keyed by join keys."""


@entities.command("create")
@click.argument("name")
@click.option("--join-key", "join_keys", multiple=True, required=True, help="Repeatable.")
@click.option("--description")
@json_option
def entity_create(
    name: str, join_keys: tuple[str, ...], description: str | None, as_json: bool
) -> None:
    """Create entity NAME keyed by --join-key (one or several)."""
    body: dict[str, Any] = {"name": name, "join_keys": list(join_keys)}
    if description is not None:
        body["description"] = description
    view = _service().create_entity(body, actor=require_writer())
    audit_cli("create_entity", resource_type="feature_entities", resource_id=view["name"])
    show_result(view, as_json, f"created entity {view['name']} ({', '.join(view['join_keys'])})")


@entities.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def entity_list(limit: int, as_json: bool) -> None:
    """List entities."""
    rows = _service().list_entities(limit=limit)
    if as_json:
        print_json(rows)
        return
    print_table(
        "entities",
        ["name", "join keys", "description", "created"],
        (
            [r["name"], ", ".join(r["join_keys"]), r["description"], (r["created_at"] or "")[:19]]
            for r in rows
        ),
    )


@entities.command("show")
@click.argument("name")
@json_option
def entity_show(name: str, as_json: bool) -> None:
    """Show an entity."""
    show_result(_service().get_entity(name), as_json)


# --- views ----------------------------------------------------------------------------------


@features.group()
def views() -> None:
    """Feature views: groups of features over one source (or computed on demand)."""


@views.command("create")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def view_create(file: Path, as_json: bool) -> None:
    """Create the view defined in FILE (.yaml, .json or .toml; docs/features.md)."""
    body = read_definition(file)
    if not isinstance(body, dict):
        raise click.BadParameter(f"{file}: the file must hold one view (an object)")
    view = _service().create_view(body, actor=require_writer())
    audit_cli("create_feature_view", resource_type="feature_views", resource_id=view["name"])
    show_result(view, as_json, f"created feature view {view['name']}: {_features_text(view)}")


@views.command("list")
@click.option("--kind", type=click.Choice(["batch", "on_demand"]))
@click.option("--entity")
@click.option("--tag")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def view_list(
    kind: str | None, entity: str | None, tag: str | None, limit: int, as_json: bool
) -> None:
    """List feature views."""
    rows = _service().list_views(kind=kind, entity=entity, tag=tag, limit=limit)
    if as_json:
        print_json(rows)
        return
    print_table(
        "feature views",
        [
            "name",
            "kind",
            "entities",
            "source",
            "features",
            "ttl (s)",
            "online",
            "version",
            "materialized until",
        ],
        (
            [
                r["name"],
                r["kind"],
                ", ".join(r["entities"]),
                _source_text(r),
                _features_text(r, 40),
                r["ttl_seconds"],
                "yes" if r["online"] else "no",
                r["version"],
                (r["materialized_until"] or "")[:19],
            ]
            for r in rows
        ),
    )


@views.command("show")
@click.argument("name")
@json_option
def view_show(name: str, as_json: bool) -> None:
    """Show a feature view and its features."""
    view = _service().get_view(name)
    if as_json:
        print_json(view)
        return
    click.echo(
        f"feature view {view['name']} ({view['kind']}, version {view['version']}): "
        f"source {_source_text(view)}"
    )
    if view["kind"] == "batch":
        click.echo(
            f"entities: {', '.join(view['entities'])} (join keys {', '.join(view['join_keys'])}); "
            f"ttl: {view['ttl_seconds'] or 'none'}; online: {'yes' if view['online'] else 'no'}; "
            f"materialized until: {view['materialized_until'] or 'never'}"
        )
    else:
        click.echo(
            f"inputs: {', '.join(view['inputs']) or 'none'}; "
            f"request fields: {view['request_fields'] or 'none'}"
        )
    _feature_table(view["features"], f"features of {view['name']}")


def _feature_table(rows: list[dict[str, Any]], title: str) -> None:
    print_table(
        title,
        ["name", "view", "type", "expression", "tags", "version", "source"],
        (
            [
                r["name"],
                r["view"],
                r["type"],
                r["expression"] or "",
                ", ".join(r["tags"]),
                r["version"],
                r["data_source"],
            ]
            for r in rows
        ),
    )


# --- features -------------------------------------------------------------------------------


@features.command("list")
@click.option("--type", "type_", type=click.Choice(FEATURE_TYPES))
@click.option("--source", help="file, sql, push, on_demand, or a file source's uri.")
@click.option("--tag")
@click.option("--entity")
@click.option("--view")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def list_(
    type_: str | None,
    source: str | None,
    tag: str | None,
    entity: str | None,
    view: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List features."""
    rows = _service().list_features(
        type=type_, source=source, tag=tag, entity=entity, view=view, limit=limit
    )
    if as_json:
        print_json(rows)
        return
    _feature_table(rows, "features")


@features.command("show")
@click.argument("feature")
@json_option
def show(feature: str, as_json: bool) -> None:
    """Show a feature (name or view:name)."""
    show_result(_service().get_feature(feature), as_json)


@features.command("history")
@click.argument("feature")
@json_option
def history(feature: str, as_json: bool) -> None:
    """Every definition FEATURE has had, with who changed it and when."""
    view = _service().feature_history(feature)
    if as_json:
        print_json(view)
        return
    print_table(
        f"history of {view['feature']}",
        ["version", "change", "type", "expression", "tags", "by", "at"],
        (
            [
                r["version"],
                r["change"],
                r["definition"].get("type"),
                r["definition"].get("expression") or "",
                ", ".join(r["definition"].get("tags") or []),
                r["changed_by"],
                (r["changed_at"] or "")[:19],
            ]
            for r in view["versions"]
        ),
    )


@features.command("values")
@click.argument("feature")
@click.option(
    "--key",
    "keys",
    multiple=True,
    required=True,
    help="An entity: join_key:value[,join_key:value]; repeatable (digits are integers).",
)
@click.option("--as-of", type=click.DateTime(), help="Offline value as of then (UTC).")
@json_option
def values(feature: str, keys: tuple[str, ...], as_of: Any, as_json: bool) -> None:
    """Online values of FEATURE for --key entities (unknown keys: missing, not an error)."""
    from datetime import timezone

    from mlrig.features.definitions import parse_key

    rows = [parse_key(k) for k in keys]
    when = as_of.replace(tzinfo=timezone.utc) if as_of is not None else None
    view = _service().feature_values(
        feature, rows, as_of=when, can_read_pii=_can_read_pii(), actor=get_principal()
    )
    if as_json:
        print_json(view)
        return
    name = view["features"][0] if view["features"] else feature
    print_table(
        f"{name}{' as of ' + when.isoformat() if when else ''}",
        ["entity", "value", "missing"],
        (
            [
                ", ".join(f"{k}={v}" for k, v in entity.items()),
                result.get(name),
                "missing" if missing else "",
            ]
            for entity, result, missing in zip(
                view["entities"], view["results"], view["missing"], strict=True
            )
        ),
    )


@features.command("push")
@click.argument("view")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def push(view: str, file: Path, as_json: bool) -> None:
    """Push the rows of FILE (.csv, .parquet or .json: a list of objects) to VIEW (a view
    with a push source); all rows or none."""
    if file.suffix.lower() == ".json":
        rows = read_definition(file)
        if not isinstance(rows, list):
            raise click.BadParameter(f"{file}: a JSON push file is a list of row objects")
    else:
        frame = read_frame(file)
        rows = json.loads(frame.to_json(orient="records", date_format="iso"))
    answer = _service().push(view, rows, actor=require_writer())
    audit_cli("push_features", resource_type="feature_views", resource_id=view)
    show_result(
        answer,
        as_json,
        f"pushed {answer['rows']} rows to {answer['view']} "
        f"({answer['offline']} offline, {answer['online']} online)",
    )


@features.command("materialize")
@click.argument("view")
@click.option("--start", type=click.DateTime(), help="UTC; default: the view's watermark.")
@click.option("--end", type=click.DateTime(), help="UTC; default: now, when the job runs.")
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
@json_option
def materialize(view: str, start: Any, end: Any, wait: bool, as_json: bool) -> None:
    """Load VIEW's rows of [--start, --end) into the online store, as a job on the
    training engine (a worker runs it: `mlrig worker`, or `mlrig server`)."""
    from datetime import timezone

    start = start.replace(tzinfo=timezone.utc) if start is not None else None
    end = end.replace(tzinfo=timezone.utc) if end is not None else None
    experiment = _service().materialize(view, start=start, end=end, actor=require_writer())
    audit_cli("materialize_features", resource_type="feature_views", resource_id=view)
    line = f"queued materialisation of {view}: experiment {experiment['name']} ({experiment['id']})"
    if not wait:
        show_result(experiment, as_json, line)
        return
    if not as_json:
        click.echo(line)
    final = _watch(experiment, quiet=as_json)
    if as_json:
        print_json(final)
    else:
        metrics = final.get("result") or final.get("metrics") or {}
        click.echo(f"{final['status']}: {json.dumps(metrics, default=str)[:300]}")
    if final["status"] != "completed":
        detail = " ".join(str(final.get("status_detail") or "no detail").split())
        click.echo(f"{final['status']}: {detail}", err=True)
        sys.exit(1)


def _watch(experiment: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from mlrig.cli.experiments import _job_watch

    service = get_platform().experiments
    workers = _job_watch(service)  # no worker alive for a while: say so and exit 3
    since = time.monotonic()
    view = experiment
    console = Console(stderr=True, quiet=quiet)

    def line(view: dict[str, Any]) -> Text:
        return Text(f"{view['name']}: {view['status']} | {int(time.monotonic() - since)} s")

    with Live(line(view), console=console, refresh_per_second=4) as live:
        while view["status"] not in FINAL:
            time.sleep(POLL_SECONDS)
            view = service.get(view["id"])
            live.update(line(view))
            workers.check(view)
    if not console.is_terminal:
        console.line()
    return view


@features.command("training-set")
@click.option(
    "--entities",
    "entities_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Entity rows: join keys and the event time (.csv or .parquet).",
)
@click.option(
    "--feature", "refs", multiple=True, required=True, help="name or view:name; repeatable."
)
@click.option("--timestamp-column", default="event_timestamp", show_default=True)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help=".csv or .parquet",
)
def training_set(
    entities_file: Path, refs: tuple[str, ...], timestamp_column: str, output: Path
) -> None:
    """A point-in-time-correct training set: each entity row with the latest value of
    each --feature at or before its event time (within the view's TTL)."""
    frame = read_frame(entities_file)
    if timestamp_column not in frame.columns:
        msg = f"{entities_file}: no {timestamp_column!r} column (the rows' event times)"
        raise click.BadParameter(msg)
    result = _service().get_historical_features(
        frame,
        list(refs),
        timestamp_column=timestamp_column,
        can_read_pii=_can_read_pii(),
        actor=get_principal(),
    )
    write_frame(result, output)
    click.echo(f"wrote {len(result):,} rows x {len(refs)} features to {output}")


# --- apply ----------------------------------------------------------------------------------


@features.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def apply(file: Path, as_json: bool) -> None:
    """Define everything in FILE (.yaml, .json, .toml): ``entities`` and ``views`` lists;
    what exists is updated (views) or checked (entities), the rest created."""
    data = read_definition(file)
    if not isinstance(data, dict) or not (set(data) & {"entities", "views"}):
        raise click.BadParameter(f"{file}: expected an object with 'entities' and/or 'views' lists")
    unknown = sorted(set(data) - {"entities", "views"})
    if unknown:
        raise click.BadParameter(f"{file}: unknown key {unknown[0]!r}; allowed: entities, views")
    from mlrig.errors import ConflictError, NotFoundError

    service = _service()
    actor = require_writer()
    done: list[dict[str, Any]] = []
    for entity in data.get("entities") or []:
        if not isinstance(entity, dict):
            raise click.BadParameter(f"{file}: each entity is an object")
        try:
            held = service.get_entity(str(entity.get("name")))
        except NotFoundError:
            service.create_entity(entity, actor=actor)
            audit_cli(
                "create_entity", resource_type="feature_entities", resource_id=str(entity["name"])
            )
            done.append({"kind": "entity", "name": entity["name"], "action": "created"})
            continue
        if list(held["join_keys"]) != list(entity.get("join_keys") or []):
            msg = (
                f"entity {held['name']!r} exists with join keys {held['join_keys']}; "
                f"{file} says {entity.get('join_keys')}: entities are not changed by apply"
            )
            raise ConflictError(msg, details={"name": held["name"]})
        done.append({"kind": "entity", "name": held["name"], "action": "unchanged"})
    for view in data.get("views") or []:
        if not isinstance(view, dict):
            raise click.BadParameter(f"{file}: each view is an object")
        name = str(view.get("name"))
        try:
            before = service.get_view(name)
        except NotFoundError:
            service.create_view(view, actor=actor)
            audit_cli("create_feature_view", resource_type="feature_views", resource_id=name)
            done.append({"kind": "view", "name": name, "action": "created"})
            continue
        after = service.update_view(name, view, actor=actor)
        changed = after["version"] != before["version"]
        if changed:
            audit_cli("update_feature_view", resource_type="feature_views", resource_id=name)
        done.append({"kind": "view", "name": name, "action": "updated" if changed else "unchanged"})
    if as_json:
        print_json(done)
        return
    for item in done:
        click.echo(f"{item['action']} {item['kind']} {item['name']}")
