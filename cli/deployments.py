"""``mlrig deployments``: create, list, show, update and delete deployments."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from mlrig.cli.context import audit_cli, get_platform, require
from mlrig.cli.output import json_option, print_json, print_table, show_result
from mlrig.security.roles import Permission

STATUSES = ["pending", "deploying", "active", "inactive", "failed"]
ENVIRONMENTS = ["development", "staging", "production"]


@click.group()
def deployments() -> None:
    """Serve model versions: create, list, show, update and delete deployments."""


# --- option parsing -----------------------------------------------------------------------


def _canaries(values: tuple[str, ...]) -> list[dict[str, Any]]:
    """``VERSION=PERCENT`` options to traffic entries."""
    out = []
    for item in values:
        version, sep, percent = item.rpartition("=")
        try:
            share = float(percent)
        except ValueError:
            share = None
        if not sep or not version or share is None:
            msg = f"--canary {item!r}: use VERSION=PERCENT, e.g. 2=10"
            raise click.BadParameter(msg)
        out.append({"version": version, "percent": share})
    return out


def _resources(values: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` options (a JSON value, else the text) to a resources object."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"--resource {item!r}: use KEY=VALUE, e.g. cpu=2"
            raise click.BadParameter(msg)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _shape_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options create and update share (what is served and how)."""
    options = [
        click.option("--runtime", help="'auto' (onnx when exported, else native) or a runtime."),
        click.option("--environment", type=click.Choice(ENVIRONMENTS)),
        click.option("--min-replicas", type=click.IntRange(1, 256)),
        click.option("--max-replicas", type=click.IntRange(1, 256)),
        click.option("--max-batch-size", type=click.IntRange(1, 100_000)),
        click.option("--max-latency-ms", type=click.FloatRange(0, 10_000)),
        click.option(
            "--canary",
            "canaries",
            multiple=True,
            help="VERSION=PERCENT: a canary version and its share of requests, repeatable.",
        ),
        click.option("--shadow", help="A version that gets a copy of every request."),
        click.option(
            "--resource",
            "resources",
            multiple=True,
            help="KEY=VALUE (JSON value), recorded for schedulers; repeatable.",
        ),
        click.option(
            "--allow-nan/--refuse-nan",
            "allow_nan",
            default=None,
            help="Accept NaN inputs (default: refuse with 422).",
        ),
        click.option(
            "--feature",
            "feature_refs",
            multiple=True,
            help="A feature the model reads from the feature store ('name' or 'view:name'), "
            "in the model's input order; repeatable. Requests then send entity keys.",
        ),
        click.option(
            "--entity-key",
            "entity_keys",
            multiple=True,
            help="With --feature: a key field each request row sends (default: the views' "
            "join keys); repeatable.",
        ),
        click.option(
            "--request-field",
            "request_fields",
            multiple=True,
            help="With --feature: a model input sent with each row at request time; repeatable.",
        ),
        click.option(
            "--fill-value",
            help="With --feature: the value (JSON) of a feature the store has no value for "
            "(default: such a row is refused with 422).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _shape(
    *,
    runtime: str | None,
    environment: str | None,
    min_replicas: int | None,
    max_replicas: int | None,
    max_batch_size: int | None,
    max_latency_ms: float | None,
    canaries: tuple[str, ...],
    shadow: str | None,
    resources: tuple[str, ...],
    allow_nan: bool | None,
    feature_refs: tuple[str, ...],
    entity_keys: tuple[str, ...],
    request_fields: tuple[str, ...],
    fill_value: str | None,
) -> dict[str, Any]:
    """The service fields the options set (unset options left out)."""
    fields: dict[str, Any] = {}
    if runtime is not None:
        fields["runtime"] = runtime
    if environment is not None:
        fields["environment"] = environment
    replicas = {"min": min_replicas, "max": max_replicas}
    if any(v is not None for v in replicas.values()):
        fields["replicas"] = {k: v for k, v in replicas.items() if v is not None}
    batching = {"max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms}
    if any(v is not None for v in batching.values()):
        fields["batching"] = {k: v for k, v in batching.items() if v is not None}
    if canaries:
        fields["traffic"] = _canaries(canaries)
    if shadow is not None:
        fields["shadow"] = shadow
    if resources:
        fields["resources"] = _resources(resources)
    if allow_nan is not None:
        fields["allow_nan"] = allow_nan
    features = _features(feature_refs, entity_keys, request_fields, fill_value)
    if features is not None:
        fields["features"] = features
    return fields


def _features(
    refs: tuple[str, ...],
    entity_keys: tuple[str, ...],
    request_fields: tuple[str, ...],
    fill_value: str | None,
) -> dict[str, Any] | None:
    """The ``features`` field of the --feature options (the service checks it)."""
    if not refs:
        given = [
            name
            for name, value in (
                ("--entity-key", entity_keys),
                ("--request-field", request_fields),
                ("--fill-value", fill_value),
            )
            if value
        ]
        if given:
            msg = f"{given[0]} needs the features it applies to: give --feature NAME"
            raise click.UsageError(msg)
        return None
    features: dict[str, Any] = {"refs": list(refs)}
    if entity_keys:
        features["entity_keys"] = list(entity_keys)
    if request_fields:
        features["request_fields"] = list(request_fields)
    if fill_value is not None:
        try:
            features["fill_value"] = json.loads(fill_value)
        except ValueError:
            msg = f"--fill-value {fill_value!r}: give a JSON value, e.g. 0, 0.5 or null"
            raise click.BadParameter(msg) from None
    return features


def _target(view: dict[str, Any]) -> str:
    served = f"{view['model']} {view['version']}"
    if view.get("alias"):
        served += f" (alias {view['alias']})"
    for canary in view.get("traffic") or []:
        served += f" + {canary['version']} {canary['percent']:g}%"
    if view.get("shadow"):
        served += f" + shadow {view['shadow']['version']}"
    return served


# --- commands -----------------------------------------------------------------------------


@deployments.command("create")
@click.argument("name")
@click.option("--model", required=True, help="The model (name or id).")
@click.option("--version", help="The version to serve (pinned).")
@click.option("--alias", help="An alias to follow (champion...): re-resolved when it moves.")
@_shape_options
@json_option
def create(
    name: str, model: str, version: str | None, alias: str | None, as_json: bool, **options: Any
) -> None:
    """Deploy a model version (or follow an alias) as NAME; it starts pending, and
    `mlrig serve` (or `mlrig server`) loads it."""
    if (version is None) == (alias is None):
        msg = "give exactly one of --version and --alias"
        raise click.UsageError(msg)
    actor = require(Permission.DEPLOY)  # as POST /api/ml/deployments
    view = get_platform().deployments.create(
        name=name, model=model, version=version, alias=alias, actor=actor, **_shape(**options)
    )
    audit_cli("create_deployment", resource_type="deployments", resource_id=view["id"])
    show_result(
        view,
        as_json,
        f"created deployment {name!r} ({_target(view)}, runtime {view['resolved_runtime']}, "
        f"{view['status']}); predict: POST {view['endpoint_url']}",
    )


@deployments.command("list")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--environment", type=click.Choice(ENVIRONMENTS))
@click.option("--model", help="Only this model's deployments.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def list_(
    status: str | None, environment: str | None, model: str | None, limit: int, as_json: bool
) -> None:
    """List deployments, oldest first."""
    require(Permission.READ)  # as GET /api/ml/deployments
    page = get_platform().deployments.list(
        status=status, environment=environment, model=model, limit=limit
    )
    if as_json:
        print_json(page["items"])
        return
    print_table(
        "deployments",
        ["name", "serves", "runtime", "environment", "status", "replicas", "id"],
        (
            [
                d["name"],
                _target(d),
                d["resolved_runtime"],
                d["environment"],
                d["status"] + (f" ({d['status_reason']})" if d["status_reason"] else ""),
                f"{d['replicas']['min']}-{d['replicas']['max']}",
                d["id"],
            ]
            for d in page["items"]
        ),
    )


@deployments.command("show")
@click.argument("ref")
@json_option
def show(ref: str, as_json: bool) -> None:
    """Show a deployment (REF: its name or id)."""
    require(Permission.READ)  # as GET /api/ml/deployments/{id}
    view = get_platform().deployments.get(ref)
    if as_json:
        print_json(view)
        return
    _render(view)


def _render(view: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    rows = [
        ("id", view["id"]),
        ("serves", _target(view)),
        ("status", view["status"]),
        ("reason", view["status_reason"]),
        ("environment", view["environment"]),
        ("runtime", f"{view['runtime']} -> {view['resolved_runtime']}"),
        ("replicas", f"min {view['replicas']['min']}, max {view['replicas']['max']}"),
        (
            "batching",
            f"max {view['batching']['max_batch_size']} rows, "
            f"{view['batching']['max_latency_ms']:g} ms",
        ),
        ("allow NaN", "yes" if view["allow_nan"] else "no"),
        ("resources", json.dumps(view["resources"]) if view["resources"] else None),
        ("features", _features_line(view.get("features"))),
        ("endpoint", f"POST {view['endpoint_url']}"),
        ("created", f"{(view['created_at'] or '')[:19]} by {view['created_by'] or '-'}"),
        ("deployed", (view["deployed_at"] or "")[:19] or None),
    ]
    for name, value in rows:
        grid.add_row(name, Text("-" if value in (None, "") else str(value)))
    Console().print(Panel(grid, title=Text(view["name"], style="bold"), title_align="left"))


def _features_line(features: dict[str, Any] | None) -> str | None:
    if not features:
        return None
    line = ", ".join(features["refs"]) + f"; keys {', '.join(features['entity_keys'])}"
    if features.get("request_fields"):
        line += f"; request fields {', '.join(features['request_fields'])}"
    if features.get("fill_value") is not None:
        line += f"; missing -> {json.dumps(features['fill_value'])}"
    return line


@deployments.command("update")
@click.argument("ref")
@click.option("--version", help="Serve this version (pinned; drops an alias).")
@click.option("--alias", help="Follow this alias (drops a pinned version).")
@_shape_options
@click.option("--no-canary", is_flag=True, help="Remove the canary versions.")
@click.option("--no-shadow", is_flag=True, help="Remove the shadow version.")
@click.option(
    "--no-features", is_flag=True, help="Stop reading features: requests send model inputs."
)
@click.option("--stop", is_flag=True, help="Stop serving (status inactive).")
@click.option("--start", is_flag=True, help="Serve again (status pending until loaded).")
@json_option
def update(
    ref: str,
    version: str | None,
    alias: str | None,
    no_canary: bool,
    no_shadow: bool,
    no_features: bool,
    stop: bool,
    start: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Change deployment REF: what it serves, how, or whether it runs. --feature
    replaces the deployment's feature references (and their options) as a whole."""
    if stop and start:
        raise click.UsageError("give --stop or --start, not both")
    if no_canary and options["canaries"]:
        raise click.UsageError("give --canary or --no-canary, not both")
    if no_shadow and options["shadow"] is not None:
        raise click.UsageError("give --shadow or --no-shadow, not both")
    if no_features and options["feature_refs"]:
        raise click.UsageError("give --feature or --no-features, not both")
    changes = _shape(**options)
    if no_features:
        changes["features"] = None
    if version is not None:
        changes["version"] = version
    if alias is not None:
        changes["alias"] = alias
    if no_canary:
        changes["traffic"] = []
    if no_shadow:
        changes["shadow"] = None
    if stop or start:
        changes["status"] = "inactive" if stop else "active"
    if not changes:
        raise click.UsageError("nothing to change; see: mlrig deployments update --help")
    actor = require(Permission.DEPLOY)  # as PUT /api/ml/deployments/{id}
    view = get_platform().deployments.update(ref, actor=actor, **changes)
    audit_cli("update_deployment", resource_type="deployments", resource_id=view["id"])
    show_result(
        view, as_json, f"updated deployment {view['name']!r} ({_target(view)}, {view['status']})"
    )


@deployments.command("delete")
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def delete(ref: str, yes: bool, as_json: bool) -> None:
    """Delete deployment REF: it stops serving and its name is free again."""
    actor = require(Permission.DEPLOY)  # as DELETE /api/ml/deployments/{id}
    service = get_platform().deployments
    view = service.get(ref)  # a clear 404 before asking
    if not yes and not click.confirm(f"delete deployment {view['name']!r}?"):
        raise click.Abort
    view = service.delete(view["id"], actor=actor)
    audit_cli("delete_deployment", resource_type="deployments", resource_id=view["id"])
    show_result(view, as_json, f"deleted deployment {view['name']!r}")
