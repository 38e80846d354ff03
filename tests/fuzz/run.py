"""Fuzz the REST API with schemathesis against a real server, on SQLite or PostgreSQL.

``python tests/fuzz/run.py sqlite`` (or ``postgresql``) sets up a fresh home (database,
local storage, auth on), creates an admin token, starts ``mlrig server`` with uvicorn on a
free loopback port, runs ``st run`` over ``/openapi.json`` with every check and every phase
(examples, coverage, fuzzing, stateful), then stops the server and drops the database.
Exits with schemathesis's status; reports land in ``--report-dir``. Extra arguments after
``--`` go to ``st run`` unchanged. The tox environment ``fuzz`` runs both databases;
docs/fuzzing.md records the command and the last counts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def database_url(kind: str, home: Path, admin_url: str) -> Iterator[str]:
    """A fresh database of ``kind``, migrated to head; a PostgreSQL one is dropped after."""
    from mlrig.db import Database, migrate

    if kind == "sqlite":
        url = f"sqlite:///{home / 'mlrig.db'}"
        name = None
    else:
        from sqlalchemy.engine import make_url

        from mlrig.testing.database import _admin

        name = f"mlrig_fuzz_{uuid.uuid4().hex[:12]}"
        _admin(admin_url, f'CREATE DATABASE "{name}"')
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        db = Database(url)
        migrate.upgrade(db)
        db.dispose()
        yield url
    finally:
        if name is not None:
            from mlrig.testing.database import drop_postgres_database

            drop_postgres_database(admin_url, name)


def write_config(home: Path, url: str) -> Path:
    """An ``mlrig.toml`` for the fuzzed server: auth on, no embedded job worker."""
    config = home / "mlrig.toml"
    config.write_text(
        "\n".join(
            [
                "[database]",
                f'url = "{url}"',
                "[storage]",
                'backend = "local"',
                "[storage.local]",
                f'root = "{home / "artifacts"}"',
                "[auth]",
                "enabled = true",
                "[server]",
                # A worker would train whatever the fuzzer queues: CPU for nothing.
                "embedded_workers = 0",
                "",
            ]
        )
    )
    return config


def admin_token(config: Path, user: str = "fuzz-admin") -> str:
    """A token of a new admin user."""
    from mlrig.platform import Platform

    platform = Platform.from_config(config)
    try:
        platform.security.create_user(name=user, role="admin")
        return str(platform.security.create_token(user=user, name="fuzz")["token"])
    finally:
        platform.close()


#: the model a valid POST /deployments case deploys (tests/fuzz/hooks.py names it)
FUZZ_MODEL = "fuzz-model"


def seed_model(config: Path) -> None:
    """Register ``fuzz-model`` version 1, a small scikit-learn classifier, so that valid
    deployment cases can create deployments (and the stateful phase follow them to their
    reads, changes, predictions and deletes) instead of all answering 404."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from mlrig.platform import Platform
    from mlrig.registry.packaging import register_model
    from mlrig.security import Principal

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    platform = Platform.from_config(config)
    try:
        actor = Principal(name="fuzz-setup", role="admin")
        register_model(platform, model, name=FUZZ_MODEL, actor=actor, sample=x[:5])
    finally:
        platform.close()


@contextlib.contextmanager
def server(config: Path, port: int, log: Path) -> Iterator[str]:
    """``mlrig server`` on 127.0.0.1:``port`` until the block ends; yields its base URL."""
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlrig.cli", "--config", str(config), "server"),
                *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    msg = f"the server exited with {proc.returncode}; see {log}"
                    raise RuntimeError(msg)
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/api/ml/health", timeout=2).status_code < 500:
                        break
                if time.monotonic() > deadline:
                    msg = f"the server did not answer within 60 s; see {log}"
                    raise RuntimeError(msg)
                time.sleep(0.2)
            yield base
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


REVOKE = "DELETE /api/ml/tokens/{id}"
#: the second pass: every token operation (the links to revoking start at creating)
TOKENS = "^/api/ml/tokens"


def st_run(
    base: str,
    token: str,
    args: argparse.Namespace,
    report_dir: Path,
    *,
    include: str | None = None,
    exclude: str | None = None,
) -> int:
    """One ``st run`` over the server's schema; its exit status."""
    command = [
        shutil.which("st") or "st",
        f"--config-file={Path(__file__).with_name('schemathesis.toml')}",
        "run",
        f"{base}/openapi.json",
        "--checks=all",
        # see schemathesis.toml: the evaluations' dataset 404 is not the version's
        "--exclude-checks=ensure_resource_availability",
        "--phases=examples,coverage,fuzzing,stateful",
        f"--header=Authorization: Bearer {token}",
        f"--max-examples={args.max_examples}",
        f"--seed={args.seed}",
        # one worker: hypothesis reads lambda sources through ast, which is not thread-safe
        # on CPython 3.11 ("AST constructor recursion depth mismatch" under 2 workers)
        "--workers=1",
        "--request-timeout=30",
        # the first experiment imports scikit-learn to check its estimator: seconds on a
        # loaded 2-core machine
        "--max-response-time=60",
        "--generation-database=:memory:",
        "--report=junit,ndjson",
        f"--report-dir={report_dir}",
    ]
    if include:
        command.append(f"--include-path-regex={include}")
    if exclude:
        command.append(f"--exclude-name={exclude}")
    print(
        "$",
        " ".join(
            c if "Bearer" not in c else "--header=Authorization: Bearer ***" for c in command[1:]
        ),
        flush=True,
    )
    hooks = {
        "SCHEMATHESIS_HOOKS": "hooks",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
        ),
    }
    env = {**os.environ, **hooks}
    return subprocess.run([*command, *args.st_args], env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "database",
        nargs="+",
        choices=["sqlite", "postgresql"],
        help="one or both: two run at once, each with its own server (output after both)",
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--max-examples", type=int, default=25, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=20269, help="reproducible runs")
    parser.add_argument("--report-dir", type=Path, default=Path("schemathesis-report"))
    parser.epilog = "Arguments after -- go to `st run` unchanged."
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.st_args = argv[cut + 1 :]
    if len(args.database) > 1:
        return fuzz_at_once(args)
    args.database = args.database[0]

    from mlrig.testing.fixtures import free_port

    home = Path(tempfile.mkdtemp(prefix=f"mlrig-fuzz-{args.database}-"))
    report_dir = args.report_dir / args.database
    report_dir.mkdir(parents=True, exist_ok=True)
    try:
        with database_url(args.database, home, args.postgres_url) as url:
            config = write_config(home, url)
            token = admin_token(config)
            seed_model(config)
            with server(config, free_port(), report_dir / "server.log") as base:
                print(f"fuzzing {base} on {args.database}", flush=True)
                # Revoking tokens in the same run would revoke the run's own token (the
                # fuzzer finds its id through GET /tokens): the token operations get a
                # pass of their own, with a token of their own, after the rest.
                main = st_run(base, token, args, report_dir / "main", exclude=REVOKE)
                revoke = st_run(
                    base,
                    admin_token(config, "fuzz-revoker"),
                    args,
                    report_dir / "revoke",
                    include=TOKENS,
                )
                return main or revoke
    finally:
        shutil.rmtree(home, ignore_errors=True)


def fuzz_at_once(args: argparse.Namespace) -> int:
    """Run this script once per database, at the same time, with the options of ``args``;
    print each run's output when all have ended; the first non-zero status, else 0.

    Most of a run is waiting on its own server, so two of them on two cores take little
    longer than one."""
    rest = [
        f"--postgres-url={args.postgres_url}",
        f"--max-examples={args.max_examples}",
        f"--seed={args.seed}",
        f"--report-dir={args.report_dir}",
        "--",
        *args.st_args,
    ]
    args.report_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for kind in dict.fromkeys(args.database):
        log = args.report_dir / f"{kind}.log"
        with log.open("wb") as out:
            command = [sys.executable, __file__, kind, *rest]
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        runs.append((kind, log, proc))
    status = 0
    for kind, log, proc in runs:
        code = proc.wait()
        print(f"===== fuzz on {kind}: exit {code} =====", flush=True)
        sys.stdout.buffer.write(log.read_bytes())
        sys.stdout.flush()
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
