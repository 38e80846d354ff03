"""Every hook a plugin can implement, grouped by lifecycle.

Hooks are for "tell everyone" and "let everyone add"; choosing *the* backend of a kind is
done by named backends (:mod:`mlrig.backends`), never by a hook. Implement a hook with
``from mlrig import hookimpl`` and register the module or object under the entry-point
group ``mlrig.hooks``. Parameters are passed by name: an implementation may accept any
subset of them. Event payloads are plain JSON-serialisable dicts so that they can be
forwarded as they are. No hook here is ``firstresult``: every implementation is called,
and the return values (``None``) are ignored. ``docs/plugin_hooks.md`` documents each hook
with an example; a test fails when a hook has no heading there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from fastapi import FastAPI

    from mlrig.platform import Platform

hookspec = pluggy.HookspecMarker("mlrig")

# --- extension hooks: let a plugin add to the front ends -----------------------------


@hookspec
def mlrig_register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``mlrig`` CLI.

    Called once per invocation when the CLI first needs the plugins' commands (to list
    them for ``mlrig --help``, or to find a command that is not built in), so added
    commands show in ``mlrig --help``. Keep it cheap: import heavy modules inside the
    command body. Commands reach the platform and the user of ``--token`` through
    :func:`mlrig.cli.pass_platform` and :func:`mlrig.cli.current_principal`.

    :param cli: the top-level ``mlrig`` group; call ``cli.add_command(...)``.
    """


@hookspec
def mlrig_register_routes(app: FastAPI, platform: Platform) -> None:
    """Add routes to the REST API.

    Called once by :func:`mlrig.api.create_app` after the built-in routers are included.
    Put plugin routes under ``/api/ml/plugins/<plugin-name>/`` to avoid clashes. The
    routes need a token like the built-in ones: the read permission unless a route
    declares ``Writer``, ``Deployer``, ``Approver``, ``Deleter`` or ``Admin`` from
    :mod:`mlrig.api.security`, or ``Public`` to opt out.

    :param app: the FastAPI application being built.
    :param platform: the platform the app serves.
    """


@hookspec
def mlrig_platform_started(platform: Platform) -> None:
    """The platform was assembled from its config (database, storage, executor ready).

    :param platform: the new :class:`mlrig.Platform`.
    """


# --- event hooks: tell every plugin what happened --------------------------------------


@hookspec
def mlrig_model_version_created(platform: Platform, version: dict[str, Any]) -> None:
    """A model version was registered (its row and artifacts are committed).

    :param platform: the platform it happened on.
    :param version: the version as the API returns it (``id``, ``name``, ``version``...).
    """


@hookspec
def mlrig_model_stage_changed(platform: Platform, event: dict[str, Any]) -> None:
    """A version's stage or alias moved, an approval request was decided, or a version
    was deleted or restored (``action`` ``"deleted"``/``"restored"``, also for each version
    of a deleted or restored model).

    :param platform: the platform it happened on.
    :param event: ``{"model_id", "name", "version", "action", "from", "to", "actor"}``.
    """


@hookspec
def mlrig_experiment_state_changed(platform: Platform, event: dict[str, Any]) -> None:
    """An experiment (training job) changed state: created, queued, running, completed,
    failed or cancelled.

    :param platform: the platform it happened on.
    :param event: ``{"experiment_id", "old", "new", "detail", "at"}``.
    """


@hookspec
def mlrig_metrics_logged(platform: Platform, experiment_id: str, count: int) -> None:
    """A batch of metric points was written for an experiment.

    Called once per written batch, not per point, so it stays off the ingest hot path.

    :param platform: the platform it happened on.
    :param experiment_id: the experiment the points belong to.
    :param count: how many points the batch held.
    """


@hookspec
def mlrig_deployment_changed(platform: Platform, event: dict[str, Any]) -> None:
    """A deployment was created, updated, scaled or stopped.

    :param platform: the platform it happened on.
    :param event: ``{"deployment_id", "action", "deployment"}``.
    """


@hookspec
def mlrig_predictions_served(platform: Platform, event: dict[str, Any]) -> None:
    """A batch of predictions was served (called from the background flusher, never on
    the request path).

    :param platform: the platform it happened on.
    :param event: ``{"deployment_id", "count", "latency_ms_p50", "records"}``.
    """


@hookspec
def mlrig_audit_recorded(platform: Platform, entry: dict[str, Any]) -> None:
    """An audit-log entry was written (forward it to a SIEM, a chat channel...).

    :param platform: the platform it happened on.
    :param entry: ``{"actor", "action", "resource_type", "resource_id", "outcome", "at",
        "request_id"}``.
    """
