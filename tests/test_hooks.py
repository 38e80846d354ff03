"""Hook specs: documented, callable through the facade, and plugins can extend the CLI/API."""

import inspect
import re
from pathlib import Path

import click

from mlrig import hookimpl, hookspecs
from mlrig.hooks import get_plugin_manager

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugin_hooks.md"


def _specs():
    return [
        n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("mlrig_")
    ]


def test_every_spec_has_a_docstring_and_a_doc_heading():
    headings = set(re.findall(r"^## (mlrig_\w+)", DOCS.read_text(), flags=re.M))
    for name in _specs():
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"
        assert name in headings, f"{name} has no heading in docs/plugin_hooks.md"
    assert headings <= set(_specs()), "docs/plugin_hooks.md documents a hook that does not exist"


def test_specs_take_no_kwargs():
    for name in _specs():
        params = inspect.signature(getattr(hookspecs, name)).parameters.values()
        assert all(p.kind is not p.VAR_KEYWORD for p in params), name


def test_event_hooks_reach_plugins(platform, register_plugin):
    seen = []

    class Recorder:
        @hookimpl
        def mlrig_model_version_created(self, version):
            seen.append(("created", version["name"]))

        @hookimpl
        def mlrig_experiment_state_changed(self, platform, event):
            seen.append(("state", event["new"], platform is not None))

    register_plugin(Recorder())
    platform.hooks.model_version_created({"name": "iris", "version": "1"})
    platform.hooks.experiment_state_changed(
        {"experiment_id": "x", "old": "queued", "new": "running"}
    )
    assert seen == [("created", "iris"), ("state", "running", True)]


def test_a_bad_hookimpl_signature_is_rejected_with_its_name():
    pm = get_plugin_manager(load_entrypoints=False)

    class Bad:
        @hookimpl
        def mlrig_metrics_logged(self, experiment_id, not_a_param):
            pass

    try:
        pm.register(Bad(), name="bad")
    except Exception as exc:  # pluggy's PluginValidationError
        assert "not_a_param" in str(exc)
        assert "mlrig_metrics_logged" in str(exc)
    else:
        raise AssertionError("pluggy accepted an unknown hook argument")


def test_register_commands_and_routes(platform, register_plugin, admin_headers):
    class Extender:
        @hookimpl
        def mlrig_register_commands(self, cli):
            cli.add_command(click.Command("hello-ext", callback=lambda: click.echo("hi")))

        @hookimpl
        def mlrig_register_routes(self, app):
            @app.get("/api/ml/plugins/ext/ping")
            def ping():
                return {"pong": True}

    register_plugin(Extender())
    group = click.Group("mlrig")
    platform.hooks.register_commands(group)
    assert "hello-ext" in group.commands

    from fastapi.testclient import TestClient

    from mlrig.api import create_app

    client = TestClient(create_app(platform))
    assert client.get("/api/ml/plugins/ext/ping", headers=admin_headers).json() == {"pong": True}
