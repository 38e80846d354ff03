"""`mlrig server` as a user runs it: first start prints an admin token; stale schemas and
unsafe auth settings are refused."""

import subprocess
import sys
import time

import httpx
import pytest

from mlrig.testing.fixtures import free_port


def _start(tmp_path, *args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "mlrig.cli", "server", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _wait_for_token(proc, deadline=60):
    lines = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith("mlr_"):
            return line.strip(), lines
    raise AssertionError("no token printed:\n" + "".join(lines))


def test_first_start_prints_an_admin_token_that_works(tmp_path):
    port = free_port()
    proc = _start(tmp_path, "--port", str(port))
    try:
        token, _ = _wait_for_token(proc)
        base = f"http://127.0.0.1:{port}/api/ml"
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.get(f"{base}/users/me").status_code == 401
        me = httpx.get(f"{base}/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json() == {"name": "admin", "role": "admin"}
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_healthy(base, deadline=60):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base}/health never answered 200")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_request_head_over_1_mib_gets_431_and_the_server_keeps_serving(tmp_path, workers):
    """The server's parser (httptools, bounded like a replica's) refuses an endless header
    with the error shape, in one process and in uvicorn's worker processes (whose config,
    the parser class included, is pickled into each)."""
    import socket

    port = free_port()
    proc = _start(tmp_path, "--port", str(port), "--workers", workers)
    try:
        token, _ = _wait_for_token(proc)
        base = f"http://127.0.0.1:{port}/api/ml"
        _wait_healthy(base)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /api/ml/health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            answer = b""
            try:
                for _ in range(2 * 1024):  # up to 2 MiB of one header
                    conn.sendall(b"a" * 1024)
            except OSError:
                pass  # refused and closed while we were still sending
            conn.settimeout(5)
            try:
                while chunk := conn.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass  # the answer came before the reset
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b'"code":"request_head_too_large"' in answer
        me = httpx.get(f"{base}/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)


def test_auth_off_is_refused_on_a_public_bind(tmp_path, run_cli):
    (tmp_path / "mlrig.toml").write_text("[auth]\nenabled = false\n")
    result = run_cli("server", "--host", "0.0.0.0", "--port", str(free_port()), cwd=tmp_path)
    assert result.exit_code != 0
    assert "only honoured on a loopback bind" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.postgres
def test_server_refuses_a_database_behind_the_code(tmp_path, pg_url, run_cli):
    result = run_cli(
        "server", "--port", str(free_port()), cwd=tmp_path, env={"MLRIG_DATABASE__URL": pg_url}
    )
    assert result.exit_code != 0
    assert "run `mlrig db upgrade`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
