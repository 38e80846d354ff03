"""The CLI against a server (``--url``/``MLRIG_URL``, ``mlrig login``) and in both modes:
the same commands give the same output and exit codes embedded and against a uvicorn
server of the same installation on loopback."""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlrig.cli.main import LOCAL_ONLY
from mlrig.testing.cli_modes import CliMode, cli_in_mode
from mlrig.testing.cli_modes import cli_mode as cli_mode  # the fixture
from mlrig.testing.fixtures import free_port

_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_HEX = re.compile(r"\b[0-9a-f]{32}\b")
_CUT_ID = re.compile(r"\b[0-9a-f]{4,}[0-9a-f-]*…")  # an id (or time) a table column cut short
_CURSOR = re.compile(r"--cursor \S+")
_REQUEST_ID = re.compile(r'"request_id": "[^"]*"')
_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(\+00:00|Z)?…?")


def _normal(text: str) -> str:
    """Output without what differs between two installations: ids and times."""
    replacements = ((_UUID, "<id>"), (_HEX, "<id>"), (_CUT_ID, "<id>…"), (_CURSOR, "<cursor>"))
    text = _REQUEST_ID.sub('"request_id": "<id>"', text)
    for pattern, placeholder in replacements:
        text = pattern.sub(placeholder, text)
    return _TIME.sub("<time>", text)


def _joblib_model(folder: Path) -> Path:
    import joblib

    from mlrig.testing.serving import breast_cancer_estimator

    path = folder / "model.joblib"
    joblib.dump(breast_cancer_estimator(), path)
    return path


def _scenario(cli: CliMode, work: Path) -> list[tuple[tuple[str, ...], int, str]]:
    """Set up one installation, then run the commands a team member runs; their
    exit codes and outputs."""
    from mlrig.testing.serving import breast_cancer_data, register_breast_cancer_model

    admin = cli.admin
    register_breast_cancer_model(cli.platform, "bc", actor=admin, metrics={"acc": 0.97})
    register_breast_cancer_model(cli.platform, "bc", variant=1, actor=admin, metrics={"acc": 0.9})
    cli.platform.experiments.create(
        name="e2", trainer="sklearn", actor=admin, hyperparameters={"n_estimators": 7}, seed=1
    )
    cli.platform.experiments.log_metrics(
        "e2", [{"name": "loss", "value": v, "step": s} for s, v in enumerate((0.9, 0.5, 0.25))]
    )
    model_file = _joblib_model(work)
    data = breast_cancer_data()
    (work / "rows.json").write_text(json.dumps({"inputs": data.x[:3].tolist()}))
    (work / "data.csv").write_text("a,target\n1,0\n")
    (work / "out").mkdir()
    commands: list[tuple[str, ...]] = [
        ("users", "create", "alice", "--role", "developer"),
        ("users", "list"),
        ("users", "list", "--json"),
        ("models", "create", "iris", "--description", "flowers", "--tag", "team=a"),
        ("models", "create", "iris"),  # taken: exit 1
        ("models", "register", str(model_file), "--name", "iris", "--metric", "acc=0.8"),
        ("models", "list"),
        ("models", "list", "--json"),
        ("models", "list", "--prefix", "ir", "--tag", "team=a"),
        ("models", "show", "bc"),
        ("models", "show", "bc", "1"),
        ("models", "show", "bc", "latest", "--json"),
        ("models", "show", "nosuch"),  # exit 1
        ("models", "versions", "bc"),
        ("models", "versions", "--metric", "acc>0.95", "--json"),
        ("models", "versions", "--framework", "sklearn", "--limit", "1"),
        ("models", "artifacts", "bc", "1"),
        ("models", "download", "iris", "1", "--out", str(work / "out"), "--json"),
        ("models", "alias", "bc", "champion", "1"),
        ("models", "show", "bc", "champion"),
        ("models", "stage", "bc", "2", "staging"),
        ("models", "stage", "bc", "1", "production"),
        ("models", "approvals"),
        ("models", "update", "bc", "--description", "breast cancer"),
        ("models", "compare", "bc", "1", "2"),
        # outside the server's dataset folders: refused alike
        ("models", "evaluate", "bc", "1", "--data", str(work / "data.csv"), "--target", "target"),
        ("models", "delete", "bc", "1", "--yes"),  # aliased: exit 1
        ("models", "delete", "iris", "1", "--yes"),
        ("models", "list", "--deleted"),
        ("models", "restore", "iris", "1"),
        ("models", "unalias", "bc", "champion"),
        (
            "experiments",
            "create",
            "e1",
            "--trainer",
            "sklearn",
            "--param",
            "n_estimators=5",
            "--seed",
            "2",
        ),
        ("experiments", "create", "e3", "--trainer", "nosuch"),  # exit 1
        ("experiments", "list"),
        ("experiments", "list", "--json"),
        ("experiments", "show", "e2"),
        ("experiments", "metrics", "e2"),
        ("experiments", "metrics", "e2", "--name", "loss", "--json"),
        ("experiments", "events", "e2"),
        ("experiments", "logs", "e2"),
        ("experiments", "compare", "e1", "e2"),
        ("experiments", "start", "e1"),
        ("experiments", "stop", "e1"),
        ("deployments", "create", "web", "--model", "bc", "--version", "2"),
        ("deployments", "list"),
        ("deployments", "show", "web"),
        ("predict", "web", "--input", str(work / "rows.json")),
        ("predict", "web", "--input", str(work / "rows.json"), "--json"),
        ("deployments", "update", "web", "--stop"),
        ("deployments", "delete", "web", "--yes"),
        ("tokens", "list", "--user", "alice", "--json"),
    ]
    results = [
        (tuple(a.replace(str(work), "<work>") for a in args), *_run(cli, args)) for args in commands
    ]
    created = json.loads(cli("tokens", "create", "--user", "alice", "--json").output)
    revoked = cli("tokens", "revoke", created["prefix"])
    shown = revoked.output.replace(created["prefix"], "<prefix>")
    results.append((("tokens", "revoke"), revoked.exit_code, shown))
    return results


def _run(cli: CliMode, args: tuple[str, ...]) -> tuple[int, str]:
    result = cli(*args)
    return result.exit_code, result.output


def _audit(cli: CliMode) -> list[tuple[str, str]]:
    """The successful actions, oldest first (the server writes its entries just after
    answering: wait for the last one, the revoke)."""
    deadline = time.monotonic() + 5
    while True:
        rows = cli.platform.audit.query(limit=1000)
        if (rows and rows[0]["action"] == "revoke_token") or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return [
        (r["actor"], r["action"])
        for r in reversed(rows)
        if r["outcome"] == "success" and r["actor"] != "serving"  # the server's data plane
    ]


def test_the_same_commands_give_the_same_output_in_both_modes(tmp_path: Path) -> None:
    outputs, audits = {}, {}
    for mode in ("embedded", "remote"):
        work = tmp_path / mode
        with cli_in_mode(mode, work / "home") as cli:
            outputs[mode] = _scenario(cli, work)
            audits[mode] = _audit(cli)
    embedded, remote = outputs["embedded"], outputs["remote"]
    assert [r[0] for r in embedded] == [r[0] for r in remote]
    differences = []
    for (args, code, out), (_, remote_code, remote_out) in zip(embedded, remote, strict=True):
        local, served = (
            _normal(out.replace(str(tmp_path / "embedded"), "<work>")),
            _normal(remote_out.replace(str(tmp_path / "remote"), "<work>")),
        )
        if code != remote_code or local != served:
            diff = "\n".join(difflib.unified_diff(local.splitlines(), served.splitlines(), n=1))
            differences.append(f"mlrig {' '.join(args)}: exit {code} vs {remote_code}\n{diff}")
    assert not differences, "\n\n".join(differences)
    # what the scenario expects, so that both modes failing alike does not pass
    codes = {" ".join(args): code for args, code, _ in embedded}
    assert codes["models create iris"] == 1
    assert codes["models show nosuch"] == 1
    assert codes["models delete bc 1 --yes"] == 1
    assert codes["experiments create e3 --trainer nosuch"] == 1
    assert codes["models evaluate bc 1 --data <work>/data.csv --target target"] == 1
    failing = {k for k, v in codes.items() if v != 0}
    assert len(failing) == 5, failing
    by_args = {" ".join(args): out for args, _, out in remote}
    assert "iris" in by_args["models list"] and "bc" in by_args["models list"]
    assert (
        json.loads(by_args["models versions --metric acc>0.95 --json"])["items"][0]["version"]
        == "1"
    )
    assert (
        len(json.loads(by_args[next(k for k in by_args if k.startswith("models download"))])) >= 2
    )
    assert "n_estimators" in by_args["experiments compare e1 e2"]
    answer = json.loads(by_args["predict web --input <work>/rows.json --json"])
    assert len(answer["predictions"]) == 3
    # the server audits what the embedded CLI audits, as the same user and action names
    assert audits["remote"] == audits["embedded"], (audits["remote"], audits["embedded"])
    assert ("cli-admin", "create_model") in audits["remote"]


# --- both modes, one by one ------------------------------------------------------------------


def test_models_and_experiments_as_json(cli_mode: CliMode) -> None:
    created = cli_mode("models", "create", "churn", "--tag", "team=growth", "--json")
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["created_by"] == "cli-admin"  # the token's user
    listed = json.loads(cli_mode("models", "list", "--json").output)
    assert [(m["name"], m["tags"]) for m in listed] == [("churn", {"team": "growth"})]
    made = cli_mode("experiments", "create", "run1", "--trainer", "sklearn", "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["status"] == "created"
    rows = json.loads(cli_mode("experiments", "list", "--status", "created", "--json").output)
    assert [r["name"] for r in rows] == ["run1"]


def test_errors_are_one_line_and_exit_1(cli_mode: CliMode) -> None:
    cli_mode.platform.security.create_user(name="viewer", role="viewer")
    token = cli_mode.platform.security.create_token(user="viewer")["token"]
    refused = cli_mode("users", "list", token=token)
    assert refused.exit_code == 1
    assert refused.output.count("\n") == 1 and "admin" in refused.output
    missing = cli_mode("experiments", "show", "nope")
    assert missing.exit_code == 1
    assert missing.output.startswith("Error: ") and missing.output.count("\n") == 1
    bad = cli_mode("models", "create", "x", token="mlrig_not-a-token")
    assert bad.exit_code == 1 and bad.output.count("\n") == 1


# --- against a server only -------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Any:
    with cli_in_mode("remote", tmp_path / "home") as cli:
        yield cli


def _cli(*args: str, env: dict[str, str | None] | None = None, input: str | None = None) -> Any:
    from click.testing import CliRunner

    from mlrig.cli.context import CliState
    from mlrig.cli.main import build_cli

    base: dict[str, str | None] = {"MLRIG_URL": None, "MLRIG_TOKEN": None, "MLRIG_CONFIG": None}
    return CliRunner().invoke(
        build_cli(), list(args), obj=CliState(), env={**base, **(env or {})}, input=input
    )


@pytest.mark.parametrize("command", sorted(LOCAL_ONLY))
def test_commands_next_to_the_database_refuse_a_url(command: str) -> None:
    result = _cli("--url", "http://127.0.0.1:9", command, "--help")
    assert result.exit_code == 2
    assert f"`mlrig {command}` runs next to the database" in result.output
    assert result.output.count("\n") == 1


def test_purge_against_a_server_exits_2(server: CliMode) -> None:
    result = server("models", "purge", "--dry-run")
    assert result.exit_code == 2
    assert "runs next to the database" in result.output


def test_an_unreachable_server_is_a_one_line_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _cli("--url", url, "--token", "x", "models", "list")
    assert result.exit_code == 1
    assert "cannot reach the mlrig server" in result.output and result.output.count("\n") == 1


def test_mlrig_url_and_token_from_the_environment(server: CliMode) -> None:
    env = {"MLRIG_URL": server.url, "MLRIG_TOKEN": server.admin_token}
    result = _cli("users", "list", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert "cli-admin" in [u["name"] for u in json.loads(result.output)]


def test_login_stores_a_checked_token_for_that_url(server: CliMode, tmp_path: Path) -> None:
    store = tmp_path / "cfg" / "credentials.toml"
    env = {"MLRIG_CREDENTIALS": str(store)}
    refused = _cli("login", server.url or "", "--token", "mlrig_wrong", env=env)
    assert refused.exit_code == 1 and not store.exists()
    # asked for when not given (not echoed)
    done = _cli("login", f"{server.url}/", env=env, input=f"{server.admin_token}\n")
    assert done.exit_code == 0, done.output
    assert "as 'cli-admin' (role admin)" in done.output
    assert server.admin_token not in done.output
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert server.admin_token in store.read_text()
    # used for that URL without --token; not for another URL
    listed = _cli("--url", server.url or "", "users", "list", "--json", env=env)
    assert listed.exit_code == 0, listed.output
    elsewhere = _cli("--url", f"http://127.0.0.1:{free_port()}", "models", "list", env=env)
    assert elsewhere.exit_code == 1
    out = _cli("logout", env={**env, "MLRIG_URL": server.url})
    assert out.exit_code == 0 and "logged out of" in out.output
    assert not store.exists()
    again = _cli("--url", server.url or "", "users", "list", env=env)
    assert again.exit_code == 1  # no token any more: the server refuses
    assert _cli("logout", env=env).exit_code == 1  # nothing left to forget


def test_the_console_script_against_a_server(server: CliMode, run_cli: Any) -> None:
    """A real process: exit codes and the server's answer, no database opened."""
    env = {"MLRIG_URL": server.url or "", "MLRIG_TOKEN": server.admin_token}
    env["MLRIG_CONFIG"] = str(Path(os.devnull).with_name("no-such") / "mlrig.toml")
    created = run_cli("models", "create", "churn", env=env)
    assert created.exit_code == 0, created.stderr
    listed = run_cli("models", "list", "--json", env=env)
    assert listed.exit_code == 0, listed.stderr
    assert [m["name"] for m in json.loads(listed.stdout)] == ["churn"]
    missing = run_cli("models", "show", "nope", env=env)
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: ")


def test_the_remote_cli_imports_no_database_layer_nor_httpx(server: CliMode) -> None:
    import subprocess

    code = (
        "import sys; from mlrig.cli.main import main\n"
        "try:\n    main(['models', 'list', '--json'])\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'\n"
        "assert 'httpx' not in sys.modules, 'httpx imported'  # JSON over http.client\n"
    )
    env = {**os.environ, "MLRIG_URL": server.url or "", "MLRIG_TOKEN": server.admin_token}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_tracked_runs_by_group_and_the_audit_log(cli_mode: CliMode) -> None:
    experiments = cli_mode.platform.experiments
    admin = cli_mode.admin
    first = experiments.start_run(actor=admin, name="trial-1", group="study", params={"lr": 0.1})
    experiments.start_run(actor=admin, name="trial-2", group="study", params={"lr": 0.2})
    experiments.start_run(actor=admin, name="other", group="elsewhere")
    experiments.log_metrics(first["id"], [{"name": "loss", "value": 0.5, "step": 1}])
    experiments.end_run(first["id"], actor=admin)
    listed = cli_mode("experiments", "list", "--group", "study", "--json")
    assert listed.exit_code == 0, listed.output
    assert sorted(r["name"] for r in json.loads(listed.output)) == ["trial-1", "trial-2"]
    tracked = cli_mode("experiments", "list", "--origin", "tracking", "--json")
    assert len(json.loads(tracked.output)) == 3
    compared = cli_mode("experiments", "compare", "trial-1", "trial-2", "--json")
    assert json.loads(compared.output)["hyperparameters"]["lr"] == [0.1, 0.2]
    assert cli_mode("models", "create", "audited").exit_code == 0
    deadline = time.monotonic() + 5  # the server writes its entry just after answering
    while True:
        shown = cli_mode("audit", "--action", "create_model", "--json")
        rows = json.loads(shown.output)
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(r["actor"], r["action"], r["outcome"]) for r in rows] == [
        ("cli-admin", "create_model", "success")
    ]


def test_what_the_facade_lacks_is_a_one_line_error(server: CliMode) -> None:
    from mlrig.remote import LocalOnlyError, RemotePlatform

    remote = RemotePlatform(server.url or "", token=server.admin_token)
    try:
        with pytest.raises(LocalOnlyError, match=r"platform\.registry\.record_rewritten"):
            remote.registry.record_rewritten_artifact  # noqa: B018
        with pytest.raises(LocalOnlyError, match=r"platform\.db"):
            remote.db  # noqa: B018
        assert remote.whoami().name == "cli-admin"
    finally:
        remote.close()


def test_with_a_proxy_in_the_environment_json_goes_through_httpx(
    server: CliMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlrig.remote import RemotePlatform
    from mlrig.remote.http import ClientJson, JsonHttp

    assert isinstance(RemotePlatform(server.url or "").http, JsonHttp)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # httpx honours it: still straight there
    remote = RemotePlatform(server.url or "", token=server.admin_token)
    try:
        assert isinstance(remote.http, ClientJson)
        assert remote.whoami().name == "cli-admin"
        assert remote.registry.list_models() == []
    finally:
        remote.close()


def test_json_http_keeps_the_connection_and_maps_errors(server: CliMode) -> None:
    from mlrig.errors import NotFoundError, ValidationError
    from mlrig.remote.http import JsonHttp

    http = JsonHttp(server.url or "", server.admin_token)
    try:
        assert http.request("GET", "/users/me")["name"] == "cli-admin"
        first = http._connection
        with pytest.raises(NotFoundError, match="no model"):
            http.request("GET", "/models/nope")
        assert http.request("GET", "/models", params={"tag": ["a:b"], "limit": 5}) == {
            "items": [],
            "next_cursor": None,
        }
        assert http._connection is first  # one connection for the whole command
        with pytest.raises(ValidationError, match="not JSON"):
            http.request("POST", "/models", json={"name": float("nan")})
    finally:
        http.close()


def test_start_wait_and_logs(cli_mode: CliMode) -> None:
    """`start --wait` follows the run until a worker ends it (exit 0 completed, 1 failed);
    `logs` and `logs -f` print the job's output: embedded and from the server."""
    import threading

    platform = cli_mode.platform
    for name in ("w1", "w2"):
        made = cli_mode(
            "experiments", "create", name, "--trainer", "sklearn", "--max-attempts", "1"
        )
        assert made.exit_code == 0, made.output
    platform.experiments.log_metrics("w1", [{"name": "loss", "value": 0.25, "step": 2}])
    platform.experiments.logs.append(platform.experiments.get("w1")["id"], b"hello\nworld\n")

    def finish(complete: bool) -> None:
        time.sleep(0.6)
        job = platform.queue.claim("test-worker", lease_seconds=30)
        assert job is not None
        if complete:
            platform.queue.complete(job, detail="done")
        else:
            platform.queue.fail(job, "boom", retry=False)

    for name, complete, code in (("w1", True, 0), ("w2", False, 1)):
        worker = threading.Thread(target=finish, args=(complete,))
        worker.start()
        result = cli_mode("experiments", "start", name, "--wait")
        worker.join()
        assert result.exit_code == code, result.output
        assert ("completed loss=0.25" if complete else "boom") in result.output
    assert cli_mode("experiments", "logs", "w1").output == "hello\nworld\n"
    assert cli_mode("experiments", "logs", "w1", "-f", "--offset", "6").output == "world\n"
