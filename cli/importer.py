"""``mlrig import``: bring runs and models in from another tool (``mlrig import mlflow``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlrig.cli.output import json_option, print_json


@click.group(name="import")
def import_group() -> None:
    """Import experiments, runs and models from another tool."""


_LABELS = [
    ("experiments", "experiments (run groups)", "groups_created", "new"),
    ("runs", "runs", "runs_imported", "imported"),
    ("params", "params", None, None),
    ("tags", "run tags", None, None),
    ("datasets", "datasets used", None, None),
    ("metric_points", "metric points", "metric_points_skipped", "skipped"),
    ("artifacts", "run artifacts", None, None),
    ("models", "registered models", "models_created", "new"),
    ("versions", "model versions", "versions_imported", "imported"),
    ("aliases", "aliases set", None, None),
    ("stages", "stages recorded", None, None),
]


def _print_summary(summary: dict[str, Any]) -> None:
    from mlrig.cli.output import print_table

    rows = []
    for key, label, extra, word in _LABELS:
        note = f"{summary[extra]} {word}" if extra else ""
        if key == "runs":
            note += f", {summary['runs_skipped']} already there"
            if summary["runs_resumed"]:
                note += f", {summary['runs_resumed']} finished (cut off before)"
            if summary["runs_failed"]:
                note += f", {summary['runs_failed']} failed"
        if key == "versions":
            note += f", {summary['versions_skipped']} already there"
            if summary["versions_not_converted"]:
                note += f", {summary['versions_not_converted']} kept as MLflow files"
            if summary["versions_unreachable"]:
                note += f", {summary['versions_unreachable']} unreachable"
            if summary["versions_failed"]:
                note += f", {summary['versions_failed']} failed"
        if key == "artifacts":
            note = f"{summary['artifact_bytes']:,} bytes"
        rows.append([label, summary[key], note])
    print_table(f"imported from {summary['source']}", ["what", "count", ""], rows)
    for warning in summary["warnings"]:
        click.echo(f"warning: {warning}", err=True)


@import_group.command("mlflow")
@click.argument("uri")
@click.option(
    "--experiment",
    "experiments",
    multiple=True,
    help="Only this MLflow experiment (by name), repeatable. Default: all.",
)
@click.option(
    "--artifacts-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="The local folder behind mlflow-artifacts:/ URIs (a server's --artifacts-destination).",
)
@click.option("--no-artifacts", is_flag=True, help="Leave the runs' files out.")
@click.option("--no-models", is_flag=True, help="Leave the registered models out.")
@click.option(
    "--no-convert",
    is_flag=True,
    help="Store model versions as their MLflow files only (no loading, no mlrig package).",
)
@click.option(
    "--mlflow-token",
    envvar="MLFLOW_TRACKING_TOKEN",
    help="Bearer token of the MLflow server [env MLFLOW_TRACKING_TOKEN].",
)
@click.option("--mlflow-username", envvar="MLFLOW_TRACKING_USERNAME", help="Basic auth user.")
@click.option("--mlflow-password", envvar="MLFLOW_TRACKING_PASSWORD", help="Basic auth password.")
@json_option
def mlflow_command(
    uri: str,
    experiments: tuple[str, ...],
    artifacts_root: Path | None,
    no_artifacts: bool,
    no_models: bool,
    no_convert: bool,
    mlflow_token: str | None,
    mlflow_username: str | None,
    mlflow_password: str | None,
    as_json: bool,
) -> None:
    """Import an MLflow store: experiments, runs (params, metrics, tags, artifacts) and
    registered models (versions, aliases, stages).

    URI is a tracking server (http://host:5000), a database (sqlite:///mlflow.db,
    postgresql://...) or a mlruns folder. Running it again imports only what is new.
    Exits 1 when a run or a version could not be imported (the summary says why).
    """
    from mlrig.cli.context import audit_cli, get_platform, require_writer
    from mlrig.importers import open_mlflow
    from mlrig.importers.mlflow_import import MlflowImporter

    actor = require_writer()
    source = open_mlflow(
        uri,
        artifacts_root=artifacts_root,
        token=mlflow_token,
        username=mlflow_username,
        password=mlflow_password,
    )
    try:
        with _progress(enabled=not as_json) as progress:
            importer = MlflowImporter(
                get_platform(),
                source,
                actor=actor,
                experiments=list(experiments) or None,
                artifacts=not no_artifacts,
                models=not no_models,
                convert=not no_convert,
                progress=progress,
            )
            summary = importer.run().as_dict()
    finally:
        source.close()
    audit_cli("import_mlflow", resource_type="experiments", resource_id=None)
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)
    if summary["runs_failed"] or summary["versions_failed"]:
        raise SystemExit(1)  # the summary says what; scripts see that not all went in


class _progress:
    """A rich progress bar with one line per phase (runs, model versions); silent when
    disabled (``--json``) or when stderr is not a terminal."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            console = Console(stderr=True)
            if console.is_terminal:
                self.bar = Progress(
                    "[progress.description]{task.description}",
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console,
                )
                self.bar.start()
        return self

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if phase not in self.tasks:
            label = "runs" if phase == "runs" else "model versions"
            self.tasks[phase] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[phase], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
