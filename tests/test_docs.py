"""Documentation that must not rot: REST reference, README/CI agreement, layout."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rest_reference_is_current():
    from mlrig.api.docgen import openapi_schema, render

    assert (ROOT / "docs" / "rest.md").read_text() == render(openapi_schema()), (
        "docs/rest.md is stale: python -m mlrig.api.docgen > docs/rest.md"
    )


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"# 2\. run the tests.*\n(.+)\n", readme).group(1)
    test_command = command.split("&&")[-1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_top_level_layout():
    expected = {
        "pyproject.toml",
        "core",
        "plugins",
        "api",
        "cli",
        "tests",
        "tox.ini",
        "docs",
        "README.md",
        ".ci",
        "benchmarks",
        "examples",
    }
    present = {p.name for p in ROOT.iterdir()}
    assert expected <= present
    assert (ROOT / "constraints.txt").read_text().count("torch==2.13.0") == 1


def test_every_cli_command_has_help():
    import click

    from mlrig.cli.main import BUILTIN_COMMANDS, _add_builtin_commands, cli

    _add_builtin_commands(cli)
    missing = []

    def walk(command, path):
        if not (command.help or "").strip():
            missing.append(" ".join(path))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])

    for name in BUILTIN_COMMANDS:
        walk(cli.commands[name], ["mlrig", name])
    assert missing == []
