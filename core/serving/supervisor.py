"""The supervisor of ``mlrig serve``: N replica processes behind one port, restarted when
they crash, scaled by :mod:`mlrig.serving.autoscale`, drained without failing requests.

Two ways to share the port (``[serving] balancing``):

``reuseport``
    The supervisor opens one ``SO_REUSEPORT`` listening socket per replica slot and hands
    it to the replica; the kernel spreads new connections over the group. The supervisor
    keeps its copy of every socket open, so connections queued on a replica that crashes
    are not reset: it accepts them and hands them to the live replicas (the descriptor
    hand-over of ``front``). It steers the kernel with a classic
    BPF program (``SO_ATTACH_REUSEPORT_CBPF``: a random pick among the *ready* slots): a
    starting, crashed or draining replica gets no new connection. A slot is removed only
    after its accept queue is empty, so a scale-down drops nothing.
``front``
    The supervisor itself accepts every connection (one thread; ``accept`` and a descriptor
    hand-over per *connection*, not per request) and passes it to the replica with the
    fewest open connections over a Unix socket (``SCM_RIGHTS``); the replica serves it
    directly. No bytes go through the supervisor.

Each replica answers ``Connection: close`` while it drains, so keep-alive clients move to
another replica; requests in flight finish. Replicas report readiness (their app answers
``/readyz``) and load over the control socket; see :mod:`mlrig.serving.replica`.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from mlrig.errors import ConfigError
from mlrig.serving.autoscale import AutoscalePolicy, ReplicaSample

#: Linux socket option numbers Python's socket module does not name
SO_ATTACH_REUSEPORT_CBPF = 51
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF
_BPF_LD_W_ABS, _BPF_ALU_MOD_K, _BPF_JEQ_K, _BPF_RET_K, _BPF_RET_A = 0x20, 0x94, 0x15, 0x06, 0x16

#: restart back-off after consecutive crashes: 0.25 s, 0.5 s, 1 s ... at most 30 s; a replica
#: that stayed ready this long resets the count
BACKOFF_FIRST, BACKOFF_MAX, STABLE_SECONDS = 0.25, 30.0, 10.0
#: a replica that fails this many times in a row before any replica was ever ready is a
#: broken setup (config, import), not a crash: the supervisor gives up with exit code 1
GIVE_UP_AFTER = 5
#: how often connection counts are compared; a replica holding over 1.25x its share (+1)
#: of the keep-alive connections closes the excess after their next answers
REBALANCE_SECONDS = 2.0


def steering_program(live: list[int]) -> bytes:
    """A classic BPF program for a ``SO_REUSEPORT`` group: a uniformly random index among
    ``live`` (positions in the group, i.e. slot numbers)."""
    ins = [(_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM), (_BPF_ALU_MOD_K, 0, 0, len(live))]
    if live == list(range(len(live))):
        ins.append((_BPF_RET_A, 0, 0, 0))
    else:
        for i, slot in enumerate(live):
            ins += [(_BPF_JEQ_K, 0, 1, i), (_BPF_RET_K, 0, 0, slot)]
        ins.append((_BPF_RET_K, 0, 0, live[0]))
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def attach_steering(sock: socket.socket, live: list[int]) -> None:
    """Attach :func:`steering_program` to the group ``sock`` belongs to (OSError if the
    kernel refuses)."""
    program = steering_program(live)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HP", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def accept_queue_length(sock: socket.socket) -> int:
    """Connections waiting in a listening socket's accept queue (``tcpi_unacked`` of
    ``TCP_INFO`` for a socket in LISTEN state)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 24)[0]


def _listening(port: int) -> bool:
    """Whether some socket on this machine already listens on ``port`` (Linux)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    local, state = line.split()[1], line.split()[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


@dataclass
class ServeOptions:
    """How ``mlrig serve`` runs (the CLI fills it from flags and ``[serving]``)."""

    host: str = "127.0.0.1"
    port: int = 8090
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    balancing: str = "reuseport"
    app: str = "mlrig.serving.replica:dataplane_app"
    log_level: str = "warning"
    target_in_flight: float = 8.0
    target_p99_ms: float = 100.0
    scale_up_window_seconds: float = 10.0
    scale_down_cooldown_seconds: float = 60.0
    stats_interval: float = 0.5
    drain_grace: float = 1.0
    graceful_timeout: float = 30.0
    backlog: int = 2048
    #: extra environment for the replicas
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Replica:
    slot: int
    proc: subprocess.Popen[bytes] | None = None
    ctrl: socket.socket | None = None
    state: str = "down"  # down | starting | ready | draining
    ready_at: float | None = None
    drain_phase: str = ""  # queue | exit (scale-down)
    drain_deadline: float = 0.0
    quiet: int = 0
    crashes: int = 0
    restart_at: float | None = None
    sample: ReplicaSample | None = None
    conns: int = 0
    handed: int = 0  # connections handed over since the last report (front)
    #: front: connections sent but not yet acknowledged, by sequence number; the
    #: supervisor keeps its descriptor until the replica confirms it took the connection,
    #: so one sent to a replica that dies first is handed to another (nothing was read)
    pending: dict[int, socket.socket] = field(default_factory=dict)


class Supervisor:
    """Runs the replicas; :meth:`run` blocks until :meth:`stop` (or SIGTERM/SIGINT)."""

    def __init__(self, options: ServeOptions, *, echo: Callable[[str], None] = print) -> None:
        self.options = options
        self.echo = echo
        low = options.min_replicas or options.replicas
        high = max(options.max_replicas or options.replicas, low)
        self.policy = AutoscalePolicy(
            min_replicas=low,
            max_replicas=high,
            target_in_flight=options.target_in_flight,
            target_p99_ms=options.target_p99_ms,
            scale_up_window_seconds=options.scale_up_window_seconds,
            scale_down_cooldown_seconds=options.scale_down_cooldown_seconds,
        )
        self.target = min(max(options.replicas, low), high)
        self.replicas: list[_Replica] = []
        self.port = options.port
        self._sockets: list[socket.socket] = []  # reuseport: one per slot
        self._front: socket.socket | None = None
        self._front_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._handoff: tuple[_Replica, ...] = ()
        self._steering = options.balancing == "reuseport"
        self._steered: list[int] | None = None
        self._selector = selectors.DefaultSelector()
        self._stopping = threading.Event()
        self._announced = False
        self._ever_ready = False
        self._exit_code = 0
        self._metrics_dir: str | None = None
        self._last_decision = 0.0
        self._last_rebalance = 0.0
        self._seq = itertools.count()

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        """Start the replicas and supervise them until stopped; returns the exit code."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self._stopping.set())
        try:
            self._prepare_metrics()
            self._open_listeners()
            for _ in range(self.target):
                self._spawn(self._new_slot())
            while not self._stopping.is_set():
                self._tick()
            self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._cleanup_metrics()
        return self._exit_code

    def stop(self) -> None:
        """Ask :meth:`run` to drain every replica and return."""
        self._stopping.set()

    @property
    def ready_count(self) -> int:
        """Replicas that loaded and warmed their models."""
        return sum(1 for r in self.replicas if r.state == "ready")

    # -- sockets ---------------------------------------------------------------------

    def _listener(self, *, reuseport: bool) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.options.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on {self.options.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        sock.listen(self.options.backlog)
        if reuseport:
            # Non-blocking for the supervisor's own accepts (a dead replica's queue); the
            # replicas' event loops set the same flag on the shared socket anyway.
            sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    def _open_listeners(self) -> None:
        if self.port and _listening(self.port):
            # SO_REUSEPORT would let a second server (same user) share the port silently.
            raise ConfigError(
                f"cannot listen on {self.options.host}:{self.port}: a server already listens "
                "on that port"
            )
        if self.options.balancing == "front":
            self._front = self._listener(reuseport=False)
            self._front.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._front_thread = threading.Thread(
                target=self._accept_loop, name="mlrig-serve-front", daemon=True
            )
            self._front_thread.start()

    def _new_slot(self) -> _Replica:
        replica = _Replica(slot=len(self.replicas))
        if self.options.balancing == "reuseport":
            self._sockets.append(self._listener(reuseport=True))
        self.replicas.append(replica)
        self._steer()
        return replica

    def _steer(self) -> None:
        """Send new connections only to ready replicas (reuseport: BPF; front: hand-off
        list)."""
        ready = [r for r in self.replicas if r.state == "ready"]
        with self._lock:
            self._handoff = tuple(ready)
        if not self._steering or not self._sockets:
            return
        # No replica ready: leave the connections queued on every slot until one is.
        live = [r.slot for r in ready] or list(range(len(self._sockets)))
        if live == self._steered:
            return
        try:
            attach_steering(self._sockets[0], live)
            self._steered = live
        except OSError as exc:
            self._steering = False
            self.echo(
                f"warning: cannot steer the SO_REUSEPORT group ({exc}); the kernel "
                "spreads connections over every replica, starting ones included"
            )

    # -- replicas --------------------------------------------------------------------

    def _spawn(self, replica: _Replica) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = [
            sys.executable,
            "-m",
            "mlrig.serving.replica",
            "--ctrl-fd",
            str(child.fileno()),
            "--app",
            self.options.app,
            "--log-level",
            self.options.log_level,
            "--stats-interval",
            str(self.options.stats_interval),
            "--drain-grace",
            str(self.options.drain_grace),
            "--graceful-timeout",
            str(self.options.graceful_timeout),
        ]
        fds = [child.fileno()]
        if self.options.balancing == "reuseport":
            listen = self._sockets[replica.slot]
            args += ["--listen-fd", str(listen.fileno())]
            fds.append(listen.fileno())
        env = {
            **os.environ,
            **self.options.env,
            "MLRIG_SERVING_REPLICAS": str(self.target),
            "MLRIG_SERVING_REPLICA": str(replica.slot),
        }
        # A new session: the terminal's Ctrl-C reaches the supervisor only, which drains
        # the replicas in order; a replica notices the supervisor's end on its ctrl socket.
        replica.proc = subprocess.Popen(args, pass_fds=fds, env=env, start_new_session=True)
        child.close()
        parent.setblocking(False)
        replica.ctrl = parent
        replica.state = "starting"
        replica.restart_at = None
        replica.sample = None
        self._selector.register(parent, selectors.EVENT_READ, replica)
        self.echo(f"replica {replica.slot} starting (pid {replica.proc.pid})")

    def _close_ctrl(self, replica: _Replica) -> None:
        if replica.ctrl is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(replica.ctrl)
            replica.ctrl.close()
            replica.ctrl = None

    def _tick(self) -> None:
        for key, _ in self._selector.select(timeout=0.05):
            self._read(key.data)
        now = time.monotonic()
        for replica in list(self.replicas):
            proc = replica.proc
            if proc is not None and proc.poll() is not None and replica.state != "draining":
                self._crashed(replica, proc.returncode, now)
            if replica.state == "draining" and replica.drain_phase:
                self._drain_step(replica, now)
                continue
            if replica.state == "down" and replica.restart_at is not None:
                if now >= replica.restart_at:
                    self._spawn(replica)
        self._autoscale(now)
        self._rebalance(now)

    def _read(self, replica: _Replica) -> None:
        while replica.ctrl is not None:
            try:
                data = replica.ctrl.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close_ctrl(replica)
                return
            if data[:1] == b"a":  # front: the replica took these connections
                with self._lock:
                    for i in range(1, len(data) - 7, 8):
                        taken = replica.pending.pop(int.from_bytes(data[i : i + 8], "little"), None)
                        if taken is not None:
                            taken.close()
                continue
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            self._on_message(replica, message)

    def _on_message(self, replica: _Replica, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "ready" and replica.state == "starting":
            replica.state = "ready"
            replica.ready_at = time.monotonic()
            self._ever_ready = True
            self.echo(f"replica {replica.slot} ready (pid {message.get('pid')})")
            self._steer()
            if not self._announced and self.ready_count >= self.target:
                self._announced = True
                self.echo(
                    f"ready: {self.ready_count} replica(s) on "
                    f"http://{self.options.host}:{self.port} ({self.options.balancing})"
                )
        elif event == "stats":
            replica.sample = ReplicaSample(
                in_flight=float(message.get("in_flight", 0.0)),
                p99_ms=message.get("p99_ms"),
                requests=int(message.get("n", 0)),
            )
            with self._lock:
                replica.conns, replica.handed = int(message.get("conns", 0)), 0

    def _crashed(self, replica: _Replica, code: int, now: float) -> None:
        assert replica.proc is not None
        pid = replica.proc.pid
        self._close_ctrl(replica)
        self._mark_dead(pid)
        stable = replica.ready_at is not None and now - replica.ready_at >= STABLE_SECONDS
        replica.crashes = 1 if stable else replica.crashes + 1
        replica.state, replica.proc, replica.ready_at = "down", None, None
        self._steer()  # new connections go to the others from now on
        self._rehand(replica, self._queued(replica))
        if not self._ever_ready and replica.crashes >= GIVE_UP_AFTER:
            self.echo(
                f"error: replica {replica.slot} failed to start {replica.crashes} times "
                f"(exit code {code}); see its output above"
            )
            self._exit_code = 1
            self._stopping.set()
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (replica.crashes - 1))
        replica.restart_at = now + delay
        self._steer()
        self.echo(
            f"replica {replica.slot} (pid {pid}) exited with {code}; restarting in {delay:g} s"
        )

    # -- scaling ---------------------------------------------------------------------

    def _autoscale(self, now: float) -> None:
        if not self.policy.enabled or now - self._last_decision < self.options.stats_interval:
            return
        self._last_decision = now
        if any(r.state != "ready" for r in self.replicas):
            return  # a replica is starting or restarting: its load is not known yet
        samples = [r.sample for r in self.replicas if r.sample is not None]
        if len(samples) < len(self.replicas):
            return
        wanted = self.policy.decide(now, samples, current=len(self.replicas))
        if wanted == len(self.replicas):
            return
        self.echo(f"scaling {len(self.replicas)} -> {wanted}: {self.policy.reason}")
        self.target = wanted
        while len(self.replicas) < wanted:
            self._spawn(self._new_slot())
        if len(self.replicas) > wanted:
            # One at a time, the last slot first (the policy steps down by one anyway).
            self._remove_last()
        for replica in self.replicas:
            replica.sample = None  # decide on fresh figures only

    def _rebalance(self, now: float) -> None:
        """Spread keep-alive connections again when one replica holds far more than its
        share (after a scale-up or a restart the old replicas keep every connection:
        new replicas would idle). The excess is closed after complete answers, so no
        request fails; the clients reconnect and are steered like new ones."""
        if now - self._last_rebalance < REBALANCE_SECONDS:
            return
        self._last_rebalance = now
        if len(self.replicas) < 2 or any(r.state != "ready" for r in self.replicas):
            return
        total = sum(r.conns for r in self.replicas)
        share = math.ceil(total / len(self.replicas))
        if max(r.conns for r in self.replicas) <= share * 1.25 + 1:
            return
        for replica in self.replicas:
            if replica.conns > share and replica.ctrl is not None:
                with contextlib.suppress(OSError):
                    replica.ctrl.send(orjson.dumps({"shed": replica.conns - share}))

    def _remove_last(self) -> None:
        """Start draining the highest slot (the last of the SO_REUSEPORT group, so removing
        it renumbers no other); :meth:`_drain_step` finishes it without blocking the loop."""
        replica = self.replicas[-1]
        replica.state = "draining"
        replica.drain_phase = "queue"
        replica.drain_deadline = time.monotonic() + 5.0
        replica.quiet = 0
        self._steer()  # no new connection reaches it from now on

    def _drain_step(self, replica: _Replica, now: float) -> None:
        """One step of a scale-down: wait until the kernel queue of its socket is empty
        (connections queued before the steering changed must be accepted by it), then
        SIGTERM (the replica finishes its requests), then remove the slot once it exited."""
        if replica.drain_phase == "queue":
            if self._sockets:
                empty = accept_queue_length(self._sockets[replica.slot]) == 0
                replica.quiet = replica.quiet + 1 if empty else 0
                if replica.quiet < 2 and now < replica.drain_deadline:
                    return
            if replica.proc is not None and replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGTERM)
            replica.drain_phase = "exit"
            replica.drain_deadline = (
                now + self.options.graceful_timeout + self.options.drain_grace + 5
            )
            return
        proc = replica.proc
        if proc is not None and proc.poll() is None:
            if now < replica.drain_deadline:
                return
            proc.kill()
            proc.wait()
        self._terminate([replica])  # collects its last messages and connections
        if self._sockets:
            self._sockets.pop().close()
        self.replicas.pop()
        self._steer()
        self.echo(f"replica {replica.slot} drained and stopped")

    def _terminate(self, replicas: list[_Replica]) -> None:
        """SIGTERM (drain), wait up to the graceful timeout, then SIGKILL."""
        procs = [r.proc for r in replicas if r.proc is not None and r.proc.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options.graceful_timeout + self.options.drain_grace + 5
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for replica in replicas:
            if replica.proc is not None:
                self._mark_dead(replica.proc.pid)
            if replica.ctrl is not None:
                self._read(replica)  # its last acknowledgements
            self._close_ctrl(replica)
            replica.proc, replica.state = None, "down"
            if not self._stopping.is_set():
                self._rehand(replica)
            with self._lock:
                for conn in replica.pending.values():
                    conn.close()
                replica.pending.clear()

    def _shutdown(self) -> None:
        self.echo("stopping: draining the replicas")
        if self._front is not None:
            with contextlib.suppress(OSError):
                self._front.shutdown(socket.SHUT_RDWR)
            self._front.close()
            if self._front_thread is not None:
                self._front_thread.join(timeout=2)
        for replica in self.replicas:
            replica.state = "draining"
        self._steer()
        self._terminate(self.replicas)
        for sock in self._sockets:
            sock.close()
        self._selector.close()
        self.echo("stopped")

    # -- front process ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._front is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._front.accept()
            except OSError:
                return
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # the client is already gone
                conn.close()
                continue
            self._hand_over(conn)  # closed once the replica acknowledges it

    def _hand_over(self, conn: socket.socket) -> None:
        payload = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", conn.fileno()))]
        while not self._stopping.is_set():
            with self._lock:
                for replica in sorted(self._handoff, key=lambda r: r.conns + r.handed):
                    ctrl = replica.ctrl
                    if ctrl is None:
                        continue
                    seq = next(self._seq)
                    try:
                        ctrl.sendmsg([b"c" + seq.to_bytes(8, "little")], payload)
                    except OSError:
                        continue  # gone or stuck: try the next one
                    replica.handed += 1
                    replica.pending[seq] = conn
                    return
            time.sleep(0.01)  # no replica ready: hold the connection until one is
        conn.close()

    def _queued(self, replica: _Replica) -> list[socket.socket]:
        """reuseport: the connections waiting in a dead replica's accept queue (nobody
        read them), taken so that the others serve them instead of its restart."""
        if not self._sockets:
            return []
        sock, taken = self._sockets[replica.slot], []
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # empty (the socket is non-blocking)
                return taken
            taken.append(conn)

    def _rehand(self, replica: _Replica, more: list[socket.socket] | None = None) -> None:
        """Hand the connections a dead replica never took to the others (in a thread: it
        waits while no replica is ready)."""
        with self._lock:
            orphans = list(replica.pending.values()) + (more or [])
            replica.pending.clear()
        if orphans:
            threading.Thread(
                target=lambda: [self._hand_over(conn) for conn in orphans],
                name="mlrig-serve-rehand",
                daemon=True,
            ).start()

    # -- metrics ---------------------------------------------------------------------

    def _prepare_metrics(self) -> None:
        """A fresh prometheus multiprocess folder the replicas share (H4's
        ``prepare_multiprocess``) when the metrics module is there."""
        try:
            from mlrig.serving import metrics
        except ImportError:
            return
        prepare = getattr(metrics, "prepare_multiprocess", None) or getattr(
            getattr(metrics, "ServingMetrics", None), "prepare_multiprocess", None
        )
        if prepare is None:
            return
        self._metrics_dir = tempfile.mkdtemp(prefix="mlrig-serve-metrics-")
        prepare(self._metrics_dir)

    def _mark_dead(self, pid: int) -> None:
        if self._metrics_dir is None:
            return
        from mlrig.serving import metrics

        mark = getattr(metrics, "mark_dead", None) or getattr(
            getattr(metrics, "ServingMetrics", None), "mark_dead", None
        )
        if mark is not None:
            with contextlib.suppress(Exception):
                mark(pid)

    def _cleanup_metrics(self) -> None:
        if self._metrics_dir is not None:
            import shutil

            shutil.rmtree(self._metrics_dir, ignore_errors=True)
