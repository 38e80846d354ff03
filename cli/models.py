"""``mlrig models``: the model registry from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlrig.cli.context import audit_cli, get_platform, get_state, require, require_writer
from mlrig.cli.output import json_option, print_json, print_table, show_result
from mlrig.security.roles import Permission

STAGES = ["none", "staging", "production", "archived"]


def _pairs(values: tuple[str, ...], what: str, *, number: bool = False) -> dict[str, Any]:
    """``KEY=VALUE`` options to a dict (numbers for metrics)."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"--{what} {item!r}: use KEY=VALUE"
            raise click.BadParameter(msg)
        if number:
            try:
                out[key] = float(value)
            except ValueError:
                msg = f"--{what} {item!r}: the value must be a number"
                raise click.BadParameter(msg) from None
        else:
            out[key] = value
    return out


def _version_rows(items: list[dict[str, Any]]) -> Any:
    for v in items:
        metrics = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v["metrics"].items())[:3])
        yield [
            v["name"],
            v["version"],
            v["stage"],
            ",".join(v.get("aliases", [])),
            v["framework"],
            metrics,
            v["created_by"],
            v["created_at"][:19],
        ]


VERSION_COLUMNS = ["model", "version", "stage", "aliases", "framework", "metrics", "by", "created"]


@click.group()
def models() -> None:
    """Register, find, promote and compare models and their versions."""


# --- models -------------------------------------------------------------------------------


@models.command("create")
@click.argument("name")
@click.option("--description", help="What the model is for.")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE, repeatable.")
@json_option
def create(name: str, description: str | None, tags: tuple[str, ...], as_json: bool) -> None:
    """Register a model NAME (versions come with `mlrig models register`)."""
    model = get_platform().registry.create_model(
        name=name, description=description, tags=_pairs(tags, "tag"), actor=require_writer()
    )
    audit_cli("create_model", resource_type="models", resource_id=model["id"])
    show_result(model, as_json, f"created model {name!r}")


@models.command("list")
@click.option("--prefix", help="Names starting with this.")
@click.option("-q", "--query", help="Names containing this.")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--deleted", is_flag=True, help="List deleted models and versions instead.")
@json_option
def list_(
    prefix: str | None,
    query: str | None,
    tags: tuple[str, ...],
    limit: int,
    deleted: bool,
    as_json: bool,
) -> None:
    """List registered models (with --deleted: what `mlrig models restore` can bring back)."""
    if deleted:
        _list_deleted(as_json)
        return
    rows = get_platform().registry.list_models(
        name_prefix=prefix, name_contains=query, tag=_pairs(tags, "tag"), limit=limit
    )
    if as_json:
        print_json(rows)
        return
    print_table(
        "models",
        ["name", "versions", "description", "by", "created"],
        (
            [m["name"], m["version_count"], m["description"], m["created_by"], m["created_at"][:19]]
            for m in rows
        ),
    )


def _list_deleted(as_json: bool) -> None:
    found = get_platform().registry.list_deleted()
    if as_json:
        print_json(found)
        return
    rows = [
        [
            "model",
            m["name"],
            f"{m['versions']} versions",
            m["id"],
            m["deleted_at"][:19],
            m["purge_after"][:19],
        ]
        for m in found["models"]
    ] + [
        ["version", v["name"], v["version"], v["id"], v["deleted_at"][:19], v["purge_after"][:19]]
        for v in found["versions"]
    ]
    print_table(
        "deleted (restore with: mlrig models restore MODEL [VERSION])",
        ["kind", "model", "version", "id", "deleted", "purge after"],
        rows,
    )


@models.command("show")
@click.argument("model")
@click.argument("version", required=False)
@json_option
def show(model: str, version: str | None, as_json: bool) -> None:
    """Show a model, or one VERSION of it (a number, an alias or 'latest') with lineage."""
    from mlrig.cli.model_views import print_renderables, render_model, render_version

    registry = get_platform().registry
    data = registry.get_version(model, version) if version else registry.get_model(model)
    if as_json:
        print_json(data)
        return
    print_renderables(render_version(data) if version else render_model(data))


@models.command("update")
@click.argument("model")
@click.argument("version", required=False)
@click.option("--description", help="New description.")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE (replaces all tags), repeatable.")
@json_option
def update(
    model: str, version: str | None, description: str | None, tags: tuple[str, ...], as_json: bool
) -> None:
    """Edit the description or tags of a model or of one VERSION (the rest is frozen)."""
    require_writer()
    registry = get_platform().registry
    new_tags = _pairs(tags, "tag") if tags else None
    if version:
        data = registry.update_version(model, version, description=description, tags=new_tags)
    else:
        data = registry.update_model(model, description=description, tags=new_tags)
    audit_cli("update_model", resource_type="models", resource_id=data["id"])
    show_result(data, as_json, f"updated {model}{' ' + version if version else ''}")


@models.command("delete")
@click.argument("model")
@click.argument("version", required=False)
@click.option(
    "--force",
    is_flag=True,
    help="Delete even a version in production, aliased or deployed (admin only).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def delete(model: str, version: str | None, force: bool, yes: bool, as_json: bool) -> None:
    """Delete a model or one VERSION (soft: `mlrig models restore` brings it back).

    Needs the deployer role; a version in production, with an alias or deployed is
    refused unless an admin adds --force.
    """
    # checked before asking: a user who may not delete is not asked to confirm
    actor = require(Permission.DELETE)  # as DELETE /api/ml/models/{id}[/versions/{version}]
    registry = get_platform().registry
    registry.deletes.check_allowed(actor, force=force)
    what = f"version {version} of {model}" if version else f"model {model} and all its versions"
    if not yes and not click.confirm(f"delete {what}?"):
        raise click.Abort
    if version:
        data = registry.delete_version(model, version, actor=actor, force=force)
    else:
        data = registry.delete_model(model, actor=actor, force=force)
    audit_cli(
        "delete_version" if version else "delete_model",
        resource_type="models",
        resource_id=data["id"],
    )
    again = f"mlrig models restore {model}" + (f" {version}" if version else "")
    show_result(data, as_json, f"deleted {what} (restorable: {again})")


@models.command("restore")
@click.argument("model")
@click.argument("version", required=False)
@json_option
def restore(model: str, version: str | None, as_json: bool) -> None:
    """Bring back a deleted MODEL (with the versions deleted along with it), or one
    deleted VERSION of a live model. Aliases removed by the delete stay removed."""
    actor = require(Permission.DELETE)  # as POST .../restore
    registry = get_platform().registry
    if version:
        data = registry.restore_version(model, version, actor=actor)
        done = f"restored version {data['version']} of {data['name']}"
    else:
        data = registry.restore_model(model, actor=actor)
        versions = ", ".join(data["restored_versions"]) or "none"
        done = f"restored model {data['name']} (versions: {versions})"
    audit_cli(
        "restore_version" if version else "restore_model",
        resource_type="models",
        resource_id=data["id"],
    )
    show_result(data, as_json, done)


@models.command("purge")
@click.option(
    "--older-than",
    "older_than",
    type=click.IntRange(0),
    help="Days since the delete (default: [registry] delete_retention_days).",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def purge(older_than: int | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Remove for good the models and versions deleted longer ago than the retention
    period: their rows and artifacts (admin only; this cannot be undone)."""
    actor = require(Permission.ADMIN)
    registry = get_platform().registry
    if not dry_run:
        plan = registry.purge(actor=actor, older_than_days=older_than, dry_run=True)
        count = len(plan["models"]) + len(plan["versions"])
        if count and not yes and not click.confirm(f"remove {count} deleted entries for good?"):
            raise click.Abort
    data = registry.purge(actor=actor, older_than_days=older_than, dry_run=dry_run)
    if not dry_run:
        audit_cli("purge_models", resource_type="models", resource_id=None)
    if as_json:
        print_json(data)
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {len(data['models'])} models and {len(data['versions'])} versions "
        f"deleted more than {data['older_than_days']} days ago ({data['objects']} artifacts)"
    )
    for name in data["models"]:
        click.echo(f"  model {name}")
    for name in data["versions"]:
        click.echo(f"  version {name}")


# --- versions -----------------------------------------------------------------------------


def _read_sample(path: Path, target: str | None, rows: int = 5) -> Any:
    import pandas as pd

    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, nrows=rows)
    frame = frame.head(rows)
    if target:
        if target not in frame.columns:
            columns = ", ".join(frame.columns)
            msg = f"--target {target!r} is not a column of {path}; columns: {columns}"
            raise click.BadParameter(msg)
        frame = frame.drop(columns=[target])
    return frame


@models.command("register")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Model name (created if new).")
@click.option("--version", "version_name", help="Version name (default: the next number).")
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV/parquet of inputs: infers the signature, enables the ONNX export.",
)
@click.option("--target", help="Column of --sample to drop (the label).")
@click.option(
    "--framework",
    type=click.Choice(["sklearn", "torch", "tensorflow", "onnx"]),
    help="Default: detected from the file.",
)
@click.option("--model-type", help="classification, regression... (default: detected).")
@click.option("--description")
@click.option("--metric", "metrics", multiple=True, help="NAME=NUMBER, repeatable.")
@click.option("--param", "params", multiple=True, help="NAME=VALUE, repeatable.")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--parent", help="The version this one was derived from.")
@click.option("--dataset", "datasets", multiple=True, help="URI of a training dataset.")
@click.option("--code-version", help="Commit or tag of the training code.")
@json_option
def register(
    path: Path,
    name: str,
    version_name: str | None,
    sample: Path | None,
    target: str | None,
    framework: str | None,
    model_type: str | None,
    description: str | None,
    metrics: tuple[str, ...],
    params: tuple[str, ...],
    tags: tuple[str, ...],
    parent: str | None,
    datasets: tuple[str, ...],
    code_version: str | None,
    as_json: bool,
) -> None:
    """Register the model file or folder PATH as a new version of --name."""
    from mlrig.registry.packaging import register_model

    dataset_refs = [{"uri": uri, "hash": _file_hash(uri)} for uri in datasets]
    version = register_model(
        get_platform(),
        path,
        name=name,
        actor=require_writer(),
        sample=_read_sample(sample, target) if sample else None,
        framework=framework,
        version=version_name,
        model_type=model_type,
        description=description,
        metrics=_pairs(metrics, "metric", number=True),
        params=_pairs(params, "param"),
        tags=_pairs(tags, "tag"),
        parent_version=parent,
        datasets=dataset_refs,
        code_version=code_version,
    )
    audit_cli("create_version", resource_type="models", resource_id=version["id"])
    files = ", ".join(a["path"] for a in version["artifacts"])
    show_result(version, as_json, f"registered {name} version {version['version']} ({files})")


def _file_hash(uri: str) -> str | None:
    import hashlib

    local = Path(uri)
    if not local.is_file():
        return None
    digest = hashlib.sha256()
    with local.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@models.command("versions")
@click.argument("model", required=False)
@click.option("--prefix", help="Model names starting with this.")
@click.option("-q", "--query", help="Model names containing this.")
@click.option("--framework")
@click.option("--model-type")
@click.option("--stage", type=click.Choice(STAGES))
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--created-by", help="User name.")
@click.option("--since", help="Created since: 30m, 2h, 7d or an ISO time.")
@click.option("--metric", "metrics", multiple=True, help="e.g. 'accuracy>0.9', repeatable.")
@click.option(
    "--sort",
    default="-created_at",
    show_default=True,
    help="created_at, name, metrics.NAME; '-' for descending.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
def versions(
    model: str | None,
    prefix: str | None,
    query: str | None,
    framework: str | None,
    model_type: str | None,
    stage: str | None,
    tags: tuple[str, ...],
    created_by: str | None,
    since: str | None,
    metrics: tuple[str, ...],
    sort: str,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Search versions (of MODEL, or of all models) with filters, sorting and paging."""
    from mlrig.cli.audit import parse_since
    from mlrig.registry.search import MetricFilter, VersionQuery

    registry = get_platform().registry
    page = registry.search_versions(
        VersionQuery(
            model_id=registry.model_id(model) if model else None,
            name_prefix=prefix,
            name_contains=query,
            framework=framework,
            model_type=model_type,
            stage=stage,
            tags=_pairs(tags, "tag"),
            created_by=created_by,
            created_after=parse_since(since) if since else None,
            metrics=tuple(MetricFilter.parse(m) for m in metrics),
            sort=sort,
            limit=limit,
            cursor=cursor,
        )
    )
    if as_json:
        print_json(page)
        return
    print_table("versions", VERSION_COLUMNS, _version_rows(page["items"]))
    if page["next_cursor"]:
        click.echo(f"more: --cursor {page['next_cursor']}")


@models.command("artifacts")
@click.argument("model")
@click.argument("version")
@json_option
def artifacts(model: str, version: str, as_json: bool) -> None:
    """List the artifact files of a version."""
    rows = get_platform().registry.list_artifacts(model, version)
    if as_json:
        print_json(rows)
        return
    print_table(
        f"{model} {version}",
        ["path", "type", "size", "sha256", "compression", "encrypted"],
        (
            [a["path"], a["type"], a["size"], a["sha256"][:16], a["compression"], a["encrypted"]]
            for a in rows
        ),
    )


@models.command("download")
@click.argument("model")
@click.argument("version")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder to write the files to.",
)
@json_option
def download(model: str, version: str, out: Path, as_json: bool) -> None:
    """Download every artifact of a version (verified against its sha256)."""
    written = get_platform().registry.download_version(model, version, out)
    show_result([str(p) for p in written], as_json, f"wrote {len(written)} files to {out}")


# --- aliases, stages, approvals -------------------------------------------------------------


@models.command("alias")
@click.argument("model")
@click.argument("alias")
@click.argument("version")
@json_option
def alias(model: str, alias: str, version: str, as_json: bool) -> None:
    """Point ALIAS (e.g. champion) of MODEL at VERSION."""
    data = get_platform().lifecycle.set_alias(model, alias, version, actor=require_writer())
    audit_cli("set_alias", resource_type="models", resource_id=f"{model}@{alias}")
    show_result(data, as_json, f"{model}@{alias} -> version {data['version']}")


@models.command("unalias")
@click.argument("model")
@click.argument("alias")
@json_option
def unalias(model: str, alias: str, as_json: bool) -> None:
    """Remove ALIAS from MODEL."""
    data = get_platform().lifecycle.delete_alias(model, alias, actor=require_writer())
    audit_cli("delete_alias", resource_type="models", resource_id=f"{model}@{alias}")
    show_result(data, as_json, f"removed {model}@{alias}")


@models.command("stage")
@click.argument("model")
@click.argument("version")
@click.argument("stage", type=click.Choice(STAGES))
@click.option("--comment", help="Why (kept with the approval request).")
@json_option
def stage(model: str, version: str, stage: str, comment: str | None, as_json: bool) -> None:
    """Move VERSION to STAGE; production opens an approval request instead."""
    data = get_platform().lifecycle.transition(
        model, version, stage, actor=require_writer(), comment=comment
    )
    audit_cli("change_stage", resource_type="models", resource_id=f"{model}/{version}")
    if data["status"] == "pending_approval":
        done = (
            f"approval request {data['request']['id']} opened: another user with the "
            f"deployer role runs `mlrig models approve {data['request']['id']}`"
        )
    else:
        done = f"{model} {version}: {data['from']} -> {data['to']}"
    show_result(data, as_json, done)


@models.command("approvals")
@click.option(
    "--status",
    type=click.Choice(["pending", "approved", "rejected", "all"]),
    default="pending",
    show_default=True,
)
@click.option("--model", help="Only this model.")
@json_option
def approvals(status: str, model: str | None, as_json: bool) -> None:
    """List approval requests."""
    rows = get_platform().lifecycle.list_requests(
        status=None if status == "all" else status, model=model
    )
    if as_json:
        print_json(rows)
        return
    print_table(
        "approval requests",
        ["id", "model", "version", "to", "status", "by", "decided by"],
        (
            [
                r["id"],
                r["model"],
                r["version"],
                r["target_stage"],
                r["status"],
                r["requested_by"],
                r["decided_by"],
            ]
            for r in rows
        ),
    )


def _decide(request_id: str, approve: bool, comment: str | None, as_json: bool) -> None:
    data = get_platform().lifecycle.decide(
        request_id, approve=approve, actor=require(Permission.APPROVE), comment=comment
    )
    audit_cli("approve" if approve else "reject", resource_type="approvals", resource_id=data["id"])
    show_result(
        data,
        as_json,
        f"{data['status']}: {data['model']} {data['version']} is now in {data['target_stage']}"
        if approve
        else f"rejected: {data['model']} {data['version']} stays where it was",
    )


@models.command("approve")
@click.argument("request_id")
@click.option("--comment", help="Why.")
@json_option
def approve(request_id: str, comment: str | None, as_json: bool) -> None:
    """Approve a pending request (a different user with the deployer role)."""
    _decide(request_id, True, comment, as_json)


@models.command("reject")
@click.argument("request_id")
@click.option("--comment", help="Why.")
@json_option
def reject(request_id: str, comment: str | None, as_json: bool) -> None:
    """Reject a pending request."""
    _decide(request_id, False, comment, as_json)


@models.command("evaluate")
@click.argument("model")
@click.argument("versions", nargs=-1, required=True)
@click.option("--data", "dataset_uri", required=True, help="CSV/parquet path or fsspec URL.")
@click.option("--target", required=True, help="The label column.")
@click.option(
    "--task",
    type=click.Choice(["classification", "regression"]),
    help="Default: the version's model type.",
)
@click.option("--runtime", help="Runtime backend (default: onnx when exported).")
@json_option
def evaluate(
    model: str,
    versions: tuple[str, ...],
    dataset_uri: str,
    target: str,
    task: str | None,
    runtime: str | None,
    as_json: bool,
) -> None:
    """Benchmark VERSIONS of MODEL on a dataset: quality metrics and latency/throughput."""
    from rich.progress import Progress

    require_writer()
    platform = get_platform()
    evaluator = platform.evaluator
    # the local operator reads their own files; a --token user gets the server's bounds
    access = platform.datasets if get_state().token else platform.datasets.local_operator()
    results = []
    with Progress(transient=True, disable=as_json) as progress:
        task_id = progress.add_task("evaluating", total=len(versions))
        for version in versions:
            results += evaluator.evaluate(
                model,
                [version],
                dataset_uri=dataset_uri,
                target=target,
                task=task,
                runtime=runtime,
                access=access,
            )
            progress.advance(task_id)
    if as_json:
        print_json(results)
        return
    names = sorted({k for r in results for k in r["metrics"]})
    print_table(
        f"{model} on {dataset_uri}",
        ["metric", *[f"v{r['version']} ({r['runtime']})" for r in results]],
        ([n, *[_fmt(r["metrics"].get(n)) for r in results]] for n in names),
    )


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}"


@models.command("compare")
@click.argument("model")
@click.argument("versions", nargs=-1, required=True)
@json_option
def compare(model: str, versions: tuple[str, ...], as_json: bool) -> None:
    """Compare VERSIONS of MODEL side by side (registered and evaluated metrics)."""
    data = get_platform().evaluator.compare(model, list(versions))
    if as_json:
        print_json(data)
        return
    print_table(
        f"{model}: " + " vs ".join(versions),
        ["metric", *[c["version"] for c in data["versions"]]],
        (
            [name, *[_fmt(row.get(c["version"])) for c in data["versions"]]]
            for name, row in data["metrics"].items()
        ),
    )
