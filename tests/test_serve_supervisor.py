"""``mlrig serve`` as a real subprocess: replicas behind one port (both balancing modes),
crash recovery under load, readiness, autoscaling on a load step, graceful stop.

The replicas run the process layer's trivial app (``mlrig.serving.replica:echo_app``,
``?sleep_ms=N`` holds a request N ms), so these tests measure the supervisor alone; the
data plane's own tests cover what a replica serves.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from _processes import alive

from mlrig.testing.fixtures import free_port

ECHO = "mlrig.serving.replica:echo_app"
BALANCING = ["reuseport", "front"]


def write_config(home: Path, *, serving: str = "", extra: str = "") -> Path:
    """The config file of a test's ``mlrig serve`` (kept if it exists)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "mlrig.toml"
    if not config.exists():
        config.write_text(
            f'[database]\nurl = "sqlite:///{home / "mlrig.db"}"\n'
            f'[storage]\nbackend = "local"\n[storage.local]\nroot = "{home / "artifacts"}"\n'
            f"[serving]\n{serving}\n{extra}\n"
        )
    return config


class Serve:
    """A running ``mlrig serve``; its output lines are collected as they come."""

    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        serving: str = "",
        app: str | None = ECHO,
    ) -> None:
        config = write_config(home, serving=serving)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlrig.cli",
                "--config",
                str(config),
                "serve",
                *(["--app", app] if app else []),
                "--port",
                str(self.port),
                *args,
            ],
            cwd=home,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 60) -> re.Match[str]:
        """The first output line from index ``after`` on matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _, line in self.lines[after:]:
                    if match := regex.search(line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not left > timeout - 1):
                    output = "\n".join(line for _, line in self.lines)
                    raise AssertionError(f"no line matching {pattern!r}; output:\n{output}")
                self._cond.wait(min(left, 0.2))

    def matching(self, pattern: str) -> list[str]:
        with self._cond:
            return [line for _, line in self.lines if re.search(pattern, line)]

    def ready_pids(self) -> dict[int, int]:
        """slot -> pid of the latest ready replica in each slot."""
        pids = {}
        for line in self.matching(r"^replica \d+ ready"):
            slot, pid = re.match(r"replica (\d+) ready \(pid (\d+)\)", line).groups()
            pids[int(slot)] = int(pid)
        return pids

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@dataclass
class Result:
    start: float
    end: float
    thread: int
    pid: int | None  # the replica that answered; None: the request failed
    error: str = ""


@dataclass
class Load:
    """Closed-loop clients, one keep-alive connection each, until :meth:`stop`."""

    url: str
    threads: int
    sleep_ms: float = 20
    #: POST this JSON to ``path`` instead of the echo app's GET (the answer has no pid:
    #: 0 stands for "served")
    body: Any = None
    path: str = "/"
    results: list[Result] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)
        ]

    def start(self) -> Load:
        for worker in self._workers:
            worker.start()
        return self

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    if self.body is None:
                        response = client.get(f"{self.url}/?sleep_ms={self.sleep_ms}")
                    else:
                        response = client.post(f"{self.url}{self.path}", json=self.body)
                    response.raise_for_status()
                    pid = response.json().get("pid", 0)
                    result = Result(start, time.monotonic(), index, pid)
                except httpx.HTTPError as exc:
                    result = Result(start, time.monotonic(), index, None, repr(exc))
                with self._lock:
                    self.results.append(result)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=40)

    @property
    def failures(self) -> list[Result]:
        with self._lock:
            return [r for r in self.results if r.pid is None]

    def pids_since(self, start: float) -> set[int]:
        with self._lock:
            return {r.pid for r in self.results if r.pid is not None and r.start >= start}

    def served(self) -> int:
        with self._lock:
            return sum(1 for r in self.results if r.pid is not None)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    started: list[Serve] = []

    def start(*args: str, **kwargs) -> Serve:
        home = kwargs.pop("home", tmp_path / f"home{len(started)}")
        server = Serve(home, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def fresh_pids(url: str, n: int) -> set[int]:
    """Which replicas answer ``n`` requests on new connections."""
    return {httpx.get(f"{url}/", timeout=30).json()["pid"] for _ in range(n)}


@pytest.mark.parametrize("balancing", BALANCING)
def test_killed_replica_fails_only_its_requests_and_is_restored(serve, balancing):
    server = serve("--replicas", "2", "--balancing", balancing)
    server.wait_for(r"^ready: 2 replica")
    before = server.ready_pids()
    assert len(set(before.values())) == 2
    load = Load(server.url, threads=8, sleep_ms=30).start()
    try:
        # Wait until both replicas hold clients and no connection moves any more (the
        # supervisor rebalances keep-alive connections at first): each client's last ten
        # answers came from one replica.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with load._lock:
                history: dict[int, list[int | None]] = {}
                for r in load.results:
                    history.setdefault(r.thread, []).append(r.pid)
            tails = [h[-10:] for h in history.values()]
            last_pid = {thread: h[-1] for thread, h in history.items()}
            if (
                len(tails) == load.threads
                and all(len(t) == 10 and len(set(t)) == 1 for t in tails)
                and set(last_pid.values()) == set(before.values())
            ):
                break
            time.sleep(0.1)
        victim = before[0]
        on_victim = sum(1 for pid in last_pid.values() if pid == victim)
        mark = len(server.lines)
        kill_time = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        server.wait_for(r"^replica 0 .*exited with -9", after=mark, timeout=20)
        restored = server.wait_for(r"^replica 0 ready \(pid (\d+)\)", after=mark, timeout=60)
        time.sleep(1.0)  # keep the load on the restored pair a while
    finally:
        load.stop()

    failures = load.failures
    # Each client holds one connection with at most one request on it: only the clients
    # whose connection was on the killed replica can fail, each once.
    assert len(failures) <= on_victim, (failures, last_pid, victim, kill_time)
    assert len({f.thread for f in failures}) == len(failures)
    assert all(f.start < kill_time + 0.5 for f in failures), failures
    assert load.served() > 0
    # The count is restored: a new process in slot 0 that takes new connections.
    new_pid = int(restored.group(1))
    assert new_pid != victim
    assert fresh_pids(server.url, 24) == {new_pid, before[1]}


def test_connections_queued_on_a_killed_replica_are_served_by_the_others(serve):
    # reuseport: connections the kernel queued on the dead replica's socket are taken by
    # the supervisor and handed to the survivor, not left waiting for the restart (slow
    # here: a 4 s warm-up).
    server = serve("--replicas", "2", env={"MLRIG_ECHO_WARMUP_SECONDS": "4"})
    server.wait_for(r"^ready: 2 replica", timeout=90)
    pids = server.ready_pids()
    victim, survivor = pids[0], pids[1]
    os.kill(victim, signal.SIGSTOP)  # it stops accepting: its share of connections queues
    answers: list[tuple[float, int | str]] = []

    def one() -> None:
        try:
            response = httpx.get(f"{server.url}/", timeout=60)
            answers.append((time.monotonic(), response.json()["pid"]))
        except httpx.HTTPError as exc:
            answers.append((time.monotonic(), repr(exc)))

    threads = [threading.Thread(target=one) for _ in range(12)]
    mark = len(server.lines)
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
    finally:
        os.kill(victim, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=60)
    restarted = server.wait_for(r"^replica 0 ready", after=mark, timeout=90)
    restarted_at = next(t for t, line in server.lines[mark:] if line == restarted.string)
    assert len(answers) == 12
    assert {pid for _, pid in answers} == {survivor}, answers
    assert all(at < restarted_at for at, _ in answers)


def test_ready_only_after_the_replicas_warmed_up_and_no_request_meets_a_cold_one(serve):
    server = serve("--replicas", "2", env={"MLRIG_ECHO_WARMUP_SECONDS": "2"})
    server.wait_for(r"^replica 1 starting")
    started_at = time.monotonic()
    answers: list[tuple[float, int]] = []

    def early_request() -> None:
        # Connects while both replicas warm up: it waits, it is never refused or failed.
        for _ in range(100):
            try:
                response = httpx.get(f"{server.url}/", timeout=30)
                answers.append((time.monotonic(), response.status_code))
                return
            except httpx.ConnectError:  # the supervisor has not bound the port yet
                time.sleep(0.05)

    thread = threading.Thread(target=early_request)
    thread.start()
    server.wait_for(r"^ready: 2 replica")
    ready_at = next(t for t, line in server.lines if line.startswith("ready:"))
    thread.join(timeout=30)
    assert ready_at - started_at >= 1.5  # the warm-up (2 s from the replica's start)
    assert answers and answers[0][1] == 200
    assert answers[0][0] >= ready_at - 0.5  # answered once warm, not before


@pytest.mark.parametrize("balancing", BALANCING)
def test_load_step_scales_up_then_down_after_the_cooldown_without_failures(serve, balancing):
    server = serve(
        "--replicas",
        "1",
        "--min-replicas",
        "1",
        "--max-replicas",
        "3",
        "--balancing",
        balancing,
        # p99 far away: a starved shared test machine must not trigger the latency rule
        # (unit-tested); this test is about the in-flight one
        serving="target_in_flight = 4\ntarget_p99_ms = 2000\nscale_up_window_seconds = 1\n"
        "scale_down_cooldown_seconds = 3\n",
    )
    server.wait_for(r"^ready: 1 replica")
    light = Load(server.url, threads=1, sleep_ms=10).start()
    try:
        time.sleep(3)
        assert server.matching(r"^scaling") == []  # constant light load: no event
        mark = len(server.lines)
        step = time.monotonic()
        # 24 clients holding requests 100 ms: ~24 in flight, 3 replicas' worth even when
        # the busy test machine slows the clients down a lot
        heavy = Load(server.url, threads=24, sleep_ms=100).start()
        try:
            server.wait_for(r"^scaling 1 -> 3", after=mark, timeout=30)
            up_after = time.monotonic() - step
            server.wait_for(r"^replica 2 ready", after=mark, timeout=60)
            # The clients' connections are spread over the new replicas (rebalancing).
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(heavy.pids_since(step)) < 3:
                time.sleep(0.2)
        finally:
            heavy.stop()
        mark = len(server.lines)
        server.wait_for(r"^scaling 3 -> 2", after=mark, timeout=30)
        server.wait_for(r"^scaling 2 -> 1", after=mark, timeout=30)
        server.wait_for(r"^replica 1 drained and stopped", after=mark, timeout=30)
        time.sleep(0.5)
    finally:
        light.stop()
    assert up_after >= 1.0  # not before its window
    output = [line for _, line in server.lines]
    assert heavy.failures == [] and light.failures == [], (heavy.failures, output)
    assert len(heavy.pids_since(step)) == 3, output  # the new replicas served
    assert len(fresh_pids(server.url, 10)) == 1  # back to one replica


@pytest.mark.parametrize("balancing", BALANCING)
def test_sigterm_finishes_requests_in_flight(serve, balancing):
    server = serve("--replicas", "2", "--balancing", balancing)
    server.wait_for(r"^ready: 2 replica")
    codes: list[int] = []
    clients = [httpx.Client(timeout=30) for _ in range(4)]
    for client in clients:  # connected before the stop: the requests are surely in flight
        assert client.get(f"{server.url}/").status_code == 200

    def slow(client: httpx.Client) -> None:
        codes.append(client.get(f"{server.url}/?sleep_ms=1500").status_code)

    threads = [threading.Thread(target=slow, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    time.sleep(0.7)
    assert server.stop() == 0
    for thread in threads:
        thread.join(timeout=30)
    for client in clients:
        client.close()
    assert codes == [200] * 4
    assert server.matching(r"^stopped")


def test_a_replica_that_cannot_start_is_retried_with_back_off_then_given_up(serve):
    server = serve("--replicas", "1", app="mlrig.serving.replica:no_such_app")
    assert server.proc.wait(timeout=120) == 1
    server.wait_for(r"failed to start 5 times", timeout=10)
    delays = [
        float(re.search(r"restarting in ([\d.]+) s", line).group(1))
        for line in server.matching(r"restarting in")
    ]
    assert delays == [0.25, 0.5, 1.0, 2.0]
    assert server.matching(r"^ready:") == []


def test_replicas_exit_when_the_supervisor_is_killed(serve):
    server = serve("--replicas", "2")
    server.wait_for(r"^ready: 2 replica")
    pids = list(server.ready_pids().values())
    server.proc.kill()
    server.proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def test_bad_replica_bounds_are_one_line_errors(run_cli, tmp_path):
    (tmp_path / "mlrig.toml").touch()
    result = run_cli("serve", "--min-replicas", "3", "--max-replicas", "2", cwd=tmp_path)
    assert result.exit_code != 0
    assert "--min-replicas" in result.stderr and "Traceback" not in result.stderr


def test_the_data_plane_in_two_replicas_predicts_and_survives_a_killed_replica(serve, tmp_path):
    from mlrig.platform import Platform
    from mlrig.testing.serving import (
        ACTOR,
        breast_cancer_data,
        breast_cancer_estimator,
        register_breast_cancer_model,
    )

    home = tmp_path / "real"
    config = write_config(home, extra="[auth]\nenabled = false\n")
    platform = Platform.from_config(config)
    try:
        register_breast_cancer_model(platform)
        # sklearn: the CI env without onnxruntime runs this test too
        platform.deployments.create(
            name="bc", model="bc", version="1", runtime="sklearn", actor=ACTOR
        )
    finally:
        platform.close()
    server = serve("--replicas", "2", home=home, app=None, env={"MLRIG_CONFIG": str(config)})
    server.wait_for(r"^ready: 2 replica", timeout=180)
    x = breast_cancer_data().x[:5]
    predict = f"{server.url}/api/ml/deployments/bc/predict"
    answer = httpx.post(predict, json={"inputs": x.tolist()}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == breast_cancer_estimator().predict(x).tolist()
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200

    load = Load(
        server.url,
        threads=6,
        body={"inputs": x[:1].tolist()},
        path="/api/ml/deployments/bc/predict",
    ).start()
    try:
        time.sleep(1.5)
        mark = len(server.lines)
        os.kill(server.ready_pids()[1], signal.SIGKILL)
        server.wait_for(r"^replica 1 .*exited with -9", after=mark, timeout=20)
        server.wait_for(r"^replica 1 ready", after=mark, timeout=180)
        restored = time.monotonic()
        time.sleep(1.0)
    finally:
        load.stop()
    failures = load.failures
    # At most the request each client had in flight on the killed replica.
    assert len({f.thread for f in failures}) == len(failures) <= load.threads, failures
    assert all(f.start < restored for f in failures)
    assert load.served() > len(failures)
    # Prometheus in multiprocess mode: any replica answers for the whole server.
    metrics = httpx.get(f"{server.url}/metrics", timeout=30)
    assert metrics.status_code == 200
    assert "mlrig_predict_requests_total" in metrics.text


def test_rolling_update_in_two_replicas_under_load_fails_no_request(serve, tmp_path):
    from mlrig.platform import Platform
    from mlrig.testing.serving import ACTOR, breast_cancer_data, register_breast_cancer_model

    home = tmp_path / "rolling"
    config = write_config(home, serving="refresh_seconds = 0.5", extra="[auth]\nenabled = false\n")
    platform = Platform.from_config(config)
    try:
        register_breast_cancer_model(platform)
        register_breast_cancer_model(platform, variant=1)
        platform.lifecycle.set_alias("bc", "champion", "1", actor=ACTOR)
        platform.deployments.create(
            name="bc", model="bc", alias="champion", runtime="sklearn", actor=ACTOR
        )
        server = serve("--replicas", "2", home=home, app=None, env={"MLRIG_CONFIG": str(config)})
        server.wait_for(r"^ready: 2 replica", timeout=180)
        x = breast_cancer_data().x[:1].tolist()
        load = Load(
            server.url, threads=4, body={"inputs": x}, path="/api/ml/deployments/bc/predict"
        ).start()
        versions: set[str] = set()
        try:
            time.sleep(1.0)
            platform.lifecycle.set_alias("bc", "champion", "2", actor=ACTOR)
            deadline = time.monotonic() + 120
            # Both replicas answer with version 2 on new connections: the update is done.
            while time.monotonic() < deadline:
                answers = [
                    httpx.post(
                        f"{server.url}/api/ml/deployments/bc/predict",
                        json={"inputs": x},
                        timeout=30,
                    ).json()["version"]
                    for _ in range(6)
                ]
                versions.update(answers)
                if set(answers) == {"2"}:
                    break
                time.sleep(0.3)
            time.sleep(1.0)
        finally:
            load.stop()
    finally:
        platform.close()
    assert versions >= {"2"}
    assert load.failures == []
    assert load.served() > 0


def test_a_busy_port_is_a_one_line_error(run_cli, tmp_path):
    import socket

    (tmp_path / "mlrig.toml").touch()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--app", ECHO, cwd=tmp_path)
    assert result.exit_code != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_another_mlrig_serve_holds_is_refused(serve, run_cli, tmp_path):
    server = serve("--replicas", "1")
    server.wait_for(r"^ready: 1 replica")
    (tmp_path / "mlrig.toml").touch()
    result = run_cli("serve", "--port", str(server.port), "--app", ECHO, cwd=tmp_path)
    assert result.exit_code != 0
    assert "already listens" in result.stderr and "Traceback" not in result.stderr


def test_a_request_head_over_1_mib_gets_431_and_the_replica_keeps_serving(serve):
    """httptools bounds nothing itself: a replica refuses an endless header (431, closed)
    instead of holding it, and answers the next request."""
    import socket
    from urllib.parse import urlsplit

    server = serve("--replicas", "1")
    server.wait_for(r"^ready: 1 replica")
    address = urlsplit(server.url)
    head = b"GET / HTTP/1.1\r\nhost: x\r\nx-junk: " + b"a" * (2 * 1024 * 1024) + b"\r\n\r\n"
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        try:
            conn.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we sent: the answer is already in our receive buffer
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(f"{server.url}/", timeout=30).status_code == 200
