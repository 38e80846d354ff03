"""The feature store beside Feast: online reads, training sets, materialisation (issue 14).

    python benchmarks/bench_features.py                        # the full run, with Feast
    python benchmarks/bench_features.py --stores sql-sqlite --training-rows 100000
    python benchmarks/bench_features.py --tiny --no-peer --json  # what CI runs

**Data** (``_features_data.py``, seeded): one entity ``driver`` (int64 ``driver_id``,
``--entities`` of them), 5 feature views of 10 float64 features each (50 in all), one
Parquet file per view with ``--rows-per-entity`` rows per driver at random event times over
30 days, a created timestamp per row and 5 % late corrections (same event time, later
created time), TTL 90 days; and ``--training-rows`` entity rows (driver id, event time)
for the training set. mlrig and Feast read the very same files.

**Feast** (``feast[redis,duckdb]==0.67.0`` in its own virtual environment under
``~/.cache/mlrig-bench/feast-0.67.0``, made the first time by
:func:`mlrig.testing.peer_venv.peer_python`; ``_feast_side.py`` runs there): a repo per
online store (``feature_store.yaml``: ``provider: local``, a file registry, online store
``sqlite`` (a file) or ``redis`` (``127.0.0.1:6379``, its own database number), offline
store ``file`` (Feast's default: pandas/dask) and, for training sets, also ``duckdb``);
the same entity and views (``FileSource`` with ``created_timestamp_column``).

**Measurements**, each system in the same run on the same machine:

1. *materialisation*: mlrig's ``materialize_view`` of each view into the store against
   ``store.materialize(start, end)``; rows/s = source rows read over the whole window
   divided by the wall time (both write the latest row per driver and view);
2. *online, in process*: ``--requests`` calls of 1 driver x 50 features and of 100
   drivers x 50 features (the same seeded keys for both), after ``--warmup`` calls,
   ``--rounds`` times over (3; each figure is the median of the rounds' figures):
   ``platform.features.get_online_features`` (mlrig's public call: resolving the names
   and one store read per view) against ``store.get_online_features(...).to_dict()``;
   p50/p99. mlrig's ``read_online`` (the store reads alone, names resolved once) is shown
   too. mlrig's ``sql`` store runs on SQLite and on PostgreSQL (``--postgres-url``, a
   throwaway database), ``redis`` on a unique key prefix; both sql rows are compared with
   Feast's SQLite store, redis with Feast's Redis store;
   In process, a round of Feast's reads runs before each round of mlrig's (Feast's paired
   store is timed again with each mlrig store), so both sample the same minutes;
3. *online, over HTTP*: the same calls to a real server on loopback, one keep-alive
   connection per server from this process, one request at a time: mlrig's ``POST
   /api/ml/features/batch`` (uvicorn, authentication on: a bearer token) against ``feast
   serve`` (its Python feature server, one worker, ``POST /get-online-features``). Both
   servers are up at once and request ``i`` goes to each in turn (the order flipping
   every request), so a busy moment of this shared machine falls on both alike;
4. *training set*: ``--training-rows`` entity rows x ``--training-features`` features
   (20: two views) point-in-time joined from the Parquet files, each system in a fresh
   process: mlrig's ``mlrig.features.offline.historical_features`` against Feast's
   ``get_historical_features(...).to_df()`` (file and duckdb offline stores), wall time
   (reading the entity rows included) and peak RSS (``ru_maxrss``); Feast gets
   ``--peer-timeout`` seconds and ``--peer-rss-cap`` of memory, else "did not finish".

The values read back are checked: mlrig's and Feast's online answers to the first 100-key
request have the same sum; the training sets' non-null counts and sums are shown side by
side. **Goals** (issue 14): p99 at most half of Feast's on each pair (in process and over
HTTP), under 50 ms over HTTP for 100 x 50, the training set under 60 s and 4 GiB. The
machine's load average is recorded: on a shared machine, compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_POSTGRES_URL, summary
from _features_data import (
    END,
    ENTITY,
    JOIN_KEY,
    START,
    TTL_DAYS,
    Layout,
    generate,
    load_layout,
    request_keys,
)

HERE = Path(__file__).resolve().parent
FEAST_REQUIREMENT = "feast[redis,duckdb]==0.67.0"
FEAST_VENV = "feast-0.67.0"
#: mlrig's stores: label -> (online backend, database)
STORES = {
    "sql-sqlite": ("sql", "sqlite"),
    "sql-postgresql": ("sql", "postgresql"),
    "redis": ("redis", "sqlite"),
}
#: which of Feast's online stores each of mlrig's is compared with
FEAST_PAIR = {"sql-sqlite": "sqlite", "sql-postgresql": "sqlite", "redis": "redis"}
FEAST_OFFLINE = ("file", "duckdb")
GOAL_P99_RATIO = 0.5
GOAL_HTTP_100_MS = 50.0
GOAL_TRAIN_S = 60.0
GOAL_TRAIN_RSS_MIB = 4096.0
BATCH_PATH = "/api/ml/features/batch"


# --- shared helpers -------------------------------------------------------------------------


def summary_rounds(rounds: list[list[float]]) -> dict[str, Any]:
    """p50/p99/mean: the medians over the rounds of each round's figure (a burst of load
    from elsewhere spoils one round's p99, not the figure), and each round's p99."""
    each = [summary(ms) for ms in rounds]
    return {
        key: round(statistics.median(s[key] for s in each), 2)
        for key in ("p50_ms", "p99_ms", "mean_ms")
    } | {"rounds": len(each), "p99_by_round": [s["p99_ms"] for s in each]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refs(layout: Layout, count: int | None = None) -> list[str]:
    """``view:name`` references of the first ``count`` features (all by default)."""
    chosen = layout.all_features() if count is None else layout.training_features(count)
    return [f"{view}:{name}" for view, name in chosen]


def value_sum(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The sum and count of the non-null values of ``names`` over ``rows`` (the check that
    both systems read the same values)."""
    total, found = 0.0, 0
    for row in rows:
        for name in names:
            value = row.get(name)
            if value is not None and value == value:  # NaN != NaN
                total += value
                found += 1
    return {"sum": round(total, 6), "values": found}


def same_values(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    if not a or not b:
        return None
    return a["values"] == b["values"] and abs(a["sum"] - b["sum"]) <= 1e-6 * max(1.0, abs(a["sum"]))


def wait_http(port: int, path: str, proc: subprocess.Popen[Any], limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"the server exited {proc.returncode} before answering {path}"
            raise RuntimeError(msg)
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                conn.close()
                return
        time.sleep(0.25)
    msg = f"no answer on 127.0.0.1:{port}{path} within {limit_s:.0f} s"
    raise RuntimeError(msg)


@contextlib.contextmanager
def server(command: list[str], port: int, ready: str, **kwargs: Any) -> Iterator[None]:
    """A server process on ``port``, stopped afterwards (SIGTERM, then SIGKILL)."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
    )
    try:
        try:
            wait_http(port, ready, proc)
        except RuntimeError as exc:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            msg = f"{exc}: {' '.join(command)}\n{tail}"
            raise RuntimeError(msg) from None
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(5)
        log.close()


class KeepAlive:
    """One keep-alive connection (TCP_NODELAY) posting JSON bodies to one path."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self.path = path
        self.headers = {"Content-Type": "application/json", **headers}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, body: bytes) -> bytes:
        """The answer's body; a non-200 answer stops the benchmark."""
        self.conn.request("POST", self.path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            msg = f"POST {self.path}: HTTP {response.status}: {data[:500]!r}"
            raise SystemExit(msg)
        return data

    def close(self) -> None:
        self.conn.close()


#: one server to time: (port, path, request bodies, headers)
Target = tuple[int, str, list[bytes], dict[str, str]]


def http_timings_together(
    targets: list[Target], warmup: int, rounds: int = 1
) -> list[tuple[list[list[float]], Any]]:
    """Time several servers over the same minutes: request ``i`` goes to every target in
    turn (the order flipping every request), one at a time, so that a busy moment of the
    machine falls on all of them alike. Per target: the latencies (ms) of each round and
    the first answer's JSON."""
    posters = [KeepAlive(port, path, headers) for port, path, _, headers in targets]
    try:
        count = min(len(bodies) for _, _, bodies, _ in targets)
        for i in range(min(warmup, count)):
            for poster, (_, _, bodies, _) in zip(posters, targets, strict=True):
                poster.post(bodies[i])
        firsts = [json.loads(p.post(t[2][0])) for p, t in zip(posters, targets, strict=True)]
        out: list[list[list[float]]] = [[] for _ in targets]
        order = list(range(len(targets)))
        for _ in range(rounds):
            ms: list[list[float]] = [[] for _ in targets]
            for i in range(count):
                for j in order if i % 2 == 0 else order[::-1]:
                    started = time.perf_counter()
                    posters[j].post(targets[j][2][i])
                    ms[j].append((time.perf_counter() - started) * 1000)
            for j, timings in enumerate(ms):
                out[j].append(timings)
    finally:
        for poster in posters:
            poster.close()
    return list(zip(out, firsts, strict=True))


def rss_watch(proc: subprocess.Popen[Any], cap_mib: float, hit: list[bool]) -> None:
    """Kill ``proc``'s process group when its process tree's RSS passes ``cap_mib``."""
    page = os.sysconf("SC_PAGE_SIZE")
    while proc.poll() is None:
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                if os.getpgid(int(entry.name)) != proc.pid:
                    continue
                total += int((entry / "statm").read_text().split()[1]) * page
        if total / 2**20 > cap_mib:
            hit.append(True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            return
        time.sleep(0.5)


def run_capped(
    command: list[str], *, timeout: float, rss_cap_mib: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a measuring subprocess that prints one JSON object; ``{"error": ...}`` when it
    fails, passes ``timeout`` or its RSS passes the cap."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    hit: list[bool] = []
    watcher = threading.Thread(target=rss_watch, args=(proc, rss_cap_mib, hit), daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.communicate()
        return {"error": f"did not finish in {timeout:.0f} s", "seconds": None}
    if hit:
        return {
            "error": f"killed at {rss_cap_mib:.0f} MiB RSS after "
            f"{time.perf_counter() - started:.0f} s",
            "seconds": None,
        }
    if proc.returncode != 0:
        return {"error": f"exited {proc.returncode}: {err.strip()[-1500:]}", "seconds": None}
    return json.loads(out.strip().splitlines()[-1])


# --- Feast's side -------------------------------------------------------------------------


class Feast:
    """Feast 0.67 in its own environment, driven through ``_feast_side.py``."""

    def __init__(self, python: Path, work: Path, layout: Layout, args: argparse.Namespace):
        from mlrig.testing.peer_venv import peer_env

        self.python = python
        self.work = work
        self.layout = layout
        self.args = args
        self.env = peer_env(python)
        self.project = f"bench_{uuid.uuid4().hex[:8]}"
        self.version = ""

    def call(self, command: str, payload: dict[str, Any], timeout: float = 1800) -> Any:
        arg_file = self.work / f"args-{uuid.uuid4().hex[:8]}.json"
        arg_file.write_text(json.dumps(payload))
        done = subprocess.run(
            [str(self.python), str(HERE / "_feast_side.py"), command, f"@{arg_file}"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            msg = f"Feast's {command} failed:\n{done.stderr[-3000:]}"
            raise RuntimeError(msg)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def repo(self, online: str, offline: str = "file") -> dict[str, Any]:
        return {
            "repo": str(self.work / f"feast-{online}-{offline}"),
            "data": self.layout.folder,
            "online": online,
            "offline": offline,
            "project": self.project,
            "redis_host": self.args.redis_host,
            "redis_port": self.args.redis_port,
            "redis_db": self.args.feast_redis_db,
        }

    def setup(self, online: str, offline: str = "file") -> dict[str, Any]:
        done = self.call("setup", self.repo(online, offline))
        self.version = done["version"]
        return done

    def materialize(self, online: str) -> dict[str, Any]:
        return self.call("materialize", self.repo(online))

    def online_round(self, online: str, keys: list[list[int]]) -> tuple[list[float], Any]:
        """One round of in-process reads (after the warm-up): latencies (ms), value check."""
        payload = {
            **self.repo(online),
            "features": refs(self.layout),
            "keys": keys,
            "warmup": self.args.warmup,
            "rounds": 1,
        }
        done = self.call("online", payload)
        return done["ms"][0], done["check"]

    @contextlib.contextmanager
    def serving(self, online: str) -> Iterator[int]:
        """``feast serve`` of the ``online`` repo on a free loopback port (yielded)."""
        port = free_port()
        feast = self.python.parent / "feast"
        command = [str(feast), "-c", self.repo(online)["repo"], "serve", "-h", "127.0.0.1"]
        command += ["-p", str(port), "--no-access-log", "--max-requests", "100000000"]
        with server(command, port, "/health", env=self.env):
            yield port

    def http_bodies(self, requests: list[list[int]]) -> list[bytes]:
        """``POST /get-online-features`` bodies of ``requests`` (entity keys)."""
        features = refs(self.layout)
        return [
            json.dumps({"features": features, "entities": {JOIN_KEY: request}}).encode()
            for request in requests
        ]

    def historical(self, offline: str) -> dict[str, Any]:
        payload = {
            **self.repo("sqlite", offline),
            "features": refs(self.layout, self.args.training_features),
        }
        self.setup("sqlite", offline)
        arg_file = self.work / f"historical-{offline}.json"
        arg_file.write_text(json.dumps(payload))
        command = [str(self.python), str(HERE / "_feast_side.py"), "historical", f"@{arg_file}"]
        return run_capped(
            command,
            timeout=self.args.peer_timeout,
            rss_cap_mib=self.args.peer_rss_cap_mib,
            env=self.env,
        )

    def clean(self) -> None:
        with contextlib.suppress(Exception):
            self.call("clean_redis", self.repo("redis"), timeout=120)


def feast_http_sum(answer: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The value check of a ``/get-online-features`` answer (columns in ``feature_names``)."""
    columns = answer["metadata"]["feature_names"]
    rows: dict[int, dict[str, Any]] = {}
    for column, result in zip(columns, answer["results"], strict=True):
        if column in names:
            for i, value in enumerate(result["values"]):
                rows.setdefault(i, {})[column] = value
    return value_sum(list(rows.values()), names)


def feast_python(args: argparse.Namespace) -> Path:
    from mlrig.testing.peer_venv import peer_python

    venv: Path | str = args.feast_venv or FEAST_VENV
    return peer_python(venv, [FEAST_REQUIREMENT])


# --- mlrig's side -------------------------------------------------------------------------


def view_bodies(layout: Layout) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The entity and the views as mlrig's REST/service bodies."""
    entity = {"name": ENTITY, "join_keys": [JOIN_KEY], "description": "benchmark driver"}
    views = []
    for i, name in enumerate(layout.view_names()):
        views.append(
            {
                "name": name,
                "entities": [ENTITY],
                "source": {
                    "kind": "file",
                    "uri": str(layout.view_path(i)),
                    "format": "parquet",
                    "timestamp_field": "event_timestamp",
                    "created_timestamp_field": "created_timestamp",
                },
                "ttl_seconds": TTL_DAYS * 86400,
                "features": [{"name": f, "type": "numerical"} for f in layout.features(i)],
            }
        )
    return entity, views


def view_specs(layout: Layout) -> list[Any]:
    """The same views as :class:`mlrig.features.spec.FeatureViewSpec` (no database)."""
    from mlrig.features.spec import EntitySpec, FeatureSpec, FeatureViewSpec, SourceSpec

    driver = EntitySpec(ENTITY, (JOIN_KEY,))
    return [
        FeatureViewSpec(
            name=name,
            entities=(driver,),
            source=SourceSpec(
                kind="file",
                uri=str(layout.view_path(i)),
                format="parquet",
                timestamp_field="event_timestamp",
                created_timestamp_field="created_timestamp",
            ),
            features=tuple(FeatureSpec(f, "numerical") for f in layout.features(i)),
            ttl_seconds=TTL_DAYS * 86400,
        )
        for i, name in enumerate(layout.view_names())
    ]


def write_config(
    home: Path, url: str, backend: str, layout: Layout, args: argparse.Namespace
) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        f'[database]\nurl = "{url}"\n',
        f'[storage]\nbackend = "local"\n\n[storage.local]\nroot = "{home / "artifacts"}"\n',
        f'[datasets]\nallowed_roots = ["{layout.folder}"]\n',
        f'[features]\nbackend = "{backend}"\nmax_entities_per_request = 10000\n',
    ]
    if backend == "redis":
        prefix = f"mlrig-bench-{uuid.uuid4().hex[:8]}:"
        redis_url = f"redis://{args.redis_host}:{args.redis_port}/{args.mlrig_redis_db}"
        lines.append(f'[features.redis]\nurl = "{redis_url}"\nprefix = "{prefix}"\n')
    config = home / "mlrig.toml"
    config.write_text("\n".join(lines))
    return config


@contextlib.contextmanager
def mlrig_database(kind: str, home: Path, args: argparse.Namespace) -> Iterator[str]:
    from _common import postgres_database

    from mlrig.db import migrate

    if kind == "sqlite":
        home.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{home / 'mlrig.db'}"
        migrate.upgrade(url)
        yield url
        return
    with postgres_database(args.postgres_url, "mlrig_bench_features_") as url:
        migrate.upgrade(url)
        yield url


def define(platform: Any, layout: Layout) -> None:
    """The entity and views, through the feature service (as the REST routes do)."""
    from mlrig.security import Principal

    actor = Principal(name="bench", role="admin")
    entity, views = view_bodies(layout)
    platform.features.create_entity(entity, actor=actor)
    for body in views:
        platform.features.create_view(body, actor=actor)


def mlrig_materialize(platform: Any, layout: Layout) -> dict[str, Any]:
    from mlrig.features.materialize import materialize_view

    specs = [platform.features.view_spec(name) for name in layout.view_names()]
    started = time.perf_counter()
    for spec in specs:
        materialize_view(platform, spec, start=START, end=END + timedelta(seconds=1))
    seconds = time.perf_counter() - started
    rows = layout.rows_per_view * layout.views
    keys = layout.entities * layout.views
    return {
        "seconds": round(seconds, 3),
        "source_rows": rows,
        "keys_written": keys,
        "rows_per_s": round(rows / seconds),
        "keys_per_s": round(keys / seconds),
    }


def timed(
    call: Any, requests: list[list[int]], warmup: int, rounds: int = 1
) -> tuple[list[list[float]], Any]:
    for request in requests[:warmup]:
        call(request)
    first = call(requests[0])
    out = []
    for _ in range(rounds):
        ms = []
        for request in requests:
            started = time.perf_counter()
            call(request)
            ms.append((time.perf_counter() - started) * 1000)
        out.append(ms)
    return out, first


def mlrig_online(
    platform: Any,
    layout: Layout,
    keys: dict[int, list[list[int]]],
    warmup: int,
    rounds: int,
    peer: Callable[[list[list[int]]], tuple[list[float], Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """In process: the façade (``platform.features.get_online_features``) and the bare
    ``read_online`` with the names resolved once; with ``peer`` (one round of Feast's
    reads), a Feast round before each of mlrig's, so that both see the same minutes.
    Returns mlrig's figures and the peer's, per batch size."""
    from mlrig.features.online import read_online

    features = refs(layout)
    names = [r.split(":", 1)[1] for r in features]
    requests = platform.features.resolve(features)
    store = platform.online_store
    out: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    for batch, requests_keys in keys.items():

        def facade(request: list[int]) -> list[dict[str, Any]]:
            rows = [{JOIN_KEY: k} for k in request]
            return platform.features.get_online_features(features, rows)["results"]

        def bare(request: list[int]) -> list[dict[str, Any]]:
            return read_online(store, requests, [{JOIN_KEY: k} for k in request])[0]

        ms: list[list[float]] = []
        bare_ms: list[list[float]] = []
        peer_ms: list[list[float]] = []
        first: Any = None
        peer_check: Any = None
        for _ in range(rounds):
            if peer is not None:
                round_ms, peer_check = peer(requests_keys)
                peer_ms.append(round_ms)
            mine, first = timed(facade, requests_keys, warmup)
            ms += mine
            bare_ms += timed(bare, requests_keys, warmup)[0]
        out[str(batch)] = {
            **summary_rounds(ms),
            "read_online": summary_rounds(bare_ms),
            "check": value_sum(first, names),
        }
        if peer is not None:
            theirs[str(batch)] = {**summary_rounds(peer_ms), "check": peer_check}
    return out, theirs


def mlrig_http(
    config: Path,
    token: str,
    layout: Layout,
    keys: dict[int, list[list[int]]],
    warmup: int,
    rounds: int,
    peer: tuple[Feast, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Over HTTP, mlrig's server (and, with ``peer``, Feast's server of that online store,
    both up at once and timed request by request in turn). Returns mlrig's figures and
    the peer's, per batch size."""
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-mlrig", str(config)]
    command += ["--port", str(port)]
    features = refs(layout)
    names = [r.split(":", 1)[1] for r in features]
    out: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    auth = {"Authorization": f"Bearer {token}"}
    peer_serving = peer[0].serving(peer[1]) if peer else contextlib.nullcontext(None)
    with server(command, port, "/api/ml/health"), peer_serving as peer_port:
        for batch, requests in keys.items():
            bodies = [
                json.dumps(
                    {"features": features, "entities": [{JOIN_KEY: k} for k in request]}
                ).encode()
                for request in requests
            ]
            targets: list[Target] = [(port, BATCH_PATH, bodies, auth)]
            if peer is not None:
                peer_bodies = peer[0].http_bodies(requests)
                targets.append((peer_port, "/get-online-features", peer_bodies, {}))
            timings = http_timings_together(targets, warmup, rounds)
            ms, first = timings[0]
            out[str(batch)] = {**summary_rounds(ms), "check": value_sum(first["results"], names)}
            if peer is not None:
                ms, first = timings[1]
                theirs[str(batch)] = {**summary_rounds(ms), "check": feast_http_sum(first, names)}
    return out, theirs


def serve_mlrig(config: Path, port: int) -> None:
    """``--serve-mlrig``: the API of the platform of ``config``, served as ``mlrig server``
    serves it (the same parser and heap freeze), without the embedded job worker."""
    from mlrig.api import create_app
    from mlrig.cli.server import run_api
    from mlrig.platform import Platform

    platform = Platform.from_config(config)
    run_api(create_app(platform), host="127.0.0.1", port=port, log_level="warning")


def mlrig_store(
    label: str,
    layout: Layout,
    keys: dict[int, list[list[int]]],
    args: argparse.Namespace,
    work: Path,
    feast: Feast | None = None,
) -> dict[str, Any]:
    """One of mlrig's online stores: define, materialise, read in process and over HTTP
    (with ``feast``: Feast's paired store timed in the same minutes, round by round in
    process, request by request over HTTP)."""
    from mlrig.platform import Platform

    backend, database = STORES[label]
    home = work / f"mlrig-{label}"
    row: dict[str, Any] = {"store": label, "backend": backend, "database": database}
    with mlrig_database(database, home, args) as url:
        config = write_config(home, url, backend, layout, args)
        platform = Platform.from_config(config)
        try:
            define(platform, layout)
            row["materialize"] = mlrig_materialize(platform, layout)
            pair = FEAST_PAIR[label]
            peer_round = None if feast is None else functools.partial(feast.online_round, pair)
            row["in_process"], row["feast_in_process"] = mlrig_online(
                platform, layout, keys, args.warmup, args.rounds, peer_round
            )
            if args.http:
                platform.security.create_user(name="bench", role="developer")
                token = platform.security.create_token(user="bench")["token"]
                row["http"], row["feast_http"] = mlrig_http(
                    config,
                    token,
                    layout,
                    keys,
                    args.warmup,
                    args.rounds,
                    None if feast is None else (feast, pair),
                )
        finally:
            if backend == "redis":
                for name in layout.view_names():
                    with contextlib.suppress(Exception):
                        platform.online_store.delete_view(name)
            platform.close()
    return row


def mlrig_historical_child(payload: dict[str, Any]) -> dict[str, Any]:
    """``--mlrig-historical``: one training set in this (fresh) process."""
    import pandas as pd

    from mlrig.features import offline

    layout = load_layout(Path(payload["data"]))
    specs = {s.name: s for s in view_specs(layout)}
    wanted = layout.training_features(payload["features"])
    requests = []
    for view in dict.fromkeys(v for v, _ in wanted):
        requests.append((specs[view], [f for v, f in wanted if v == view]))
    started = time.perf_counter()
    entity_df = pd.read_parquet(layout.entity_df_path)
    frame = offline.historical_features(None, entity_df, requests)
    seconds = time.perf_counter() - started
    names = [f for _, f in wanted]
    return {
        "seconds": round(seconds, 3),
        "rows": len(frame),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "non_null": int(frame[names].notna().sum().sum()),
        "sum": round(float(frame[names].sum().sum()), 3),
    }


def mlrig_historical(layout: Layout, args: argparse.Namespace) -> dict[str, Any]:
    payload = json.dumps({"data": layout.folder, "features": args.training_features})
    command = [sys.executable, str(Path(__file__).resolve()), "--mlrig-historical", payload]
    return run_capped(command, timeout=args.peer_timeout, rss_cap_mib=args.peer_rss_cap_mib)


# --- the report ---------------------------------------------------------------------------


def online_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (mlrig store, shape, side) beside Feast's pair, with the goals."""
    rows = []
    n = report["features_online"]
    for store in report["mlrig"]["stores"]:
        pair = FEAST_PAIR[store["store"]]
        for side in ("in_process", "http"):
            for batch in report["batches"]:
                mine = (store.get(side) or {}).get(str(batch))
                if mine is None:
                    continue
                # Feast's figure from the same minutes as this store's
                theirs = (store.get(f"feast_{side}") or {}).get(str(batch))
                ratio = round(mine["p99_ms"] / theirs["p99_ms"], 3) if theirs else None
                goals = [f"p99 <= {GOAL_P99_RATIO} x Feast's"]
                met = ratio is not None and ratio <= GOAL_P99_RATIO
                if side == "http" and batch == 100:
                    goals.append(f"p99 < {GOAL_HTTP_100_MS:.0f} ms")
                    met = met and mine["p99_ms"] < GOAL_HTTP_100_MS
                rows.append(
                    {
                        "benchmark": f"online {batch} x {n} {side.replace('_', ' ')}",
                        "mlrig": store["store"],
                        "feast": f"feast {pair}" if theirs else None,
                        "mlrig_p50_ms": mine["p50_ms"],
                        "mlrig_p99_ms": mine["p99_ms"],
                        "mlrig_read_online": mine.get("read_online"),
                        "feast_p50_ms": theirs["p50_ms"] if theirs else None,
                        "feast_p99_ms": theirs["p99_ms"] if theirs else None,
                        "p99_ratio": ratio,
                        "values_agree": same_values(mine.get("check"), (theirs or {}).get("check")),
                        "goal": " and ".join(goals),
                        "goal_met": bool(met),
                    }
                )
    return rows


def table(report: dict[str, Any]) -> str:
    lines = [
        f"data: {report['layout']['entities']} drivers, {report['features_online']} features in "
        f"{report['layout']['views']} views, {report['layout']['rows_per_entity']} rows per "
        f"driver and view; {report['requests']} requests per figure; load average "
        f"{report['load_average']['start']} -> {report['load_average']['end']}",
        f"Feast: {report['feast_version'] or 'not run'}; phases (s): "
        + ", ".join(f"{k} {v}" for k, v in report.get("phases_s", {}).items()),
        "",
        "| online read | mlrig store | Feast store | mlrig p50 / p99 ms | (read_online) "
        "| Feast p50 / p99 ms | p99 ratio | same values | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v}"

    for r in report["online"]:
        core = r.get("mlrig_read_online")
        bare = f"{core['p50_ms']} / {core['p99_ms']}" if core else "-"
        lines.append(
            f"| {r['benchmark']} | {r['mlrig']} | {fmt(r['feast'])} | {r['mlrig_p50_ms']} / "
            f"{r['mlrig_p99_ms']} | {bare} | {fmt(r['feast_p50_ms'])} / {fmt(r['feast_p99_ms'])} | "
            f"{fmt(r['p99_ratio'])} | {fmt(r['values_agree'])} | {r['goal']} | "
            f"{'yes' if r['goal_met'] else 'no'} |"
        )
    lines += [
        "",
        "| materialisation | store | seconds | source rows/s | keys/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["materialize"]:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['store']} | {r['error']} | - | - |")
        else:
            lines.append(
                f"| {r['system']} | {r['store']} | {r['seconds']} | {r['rows_per_s']} | "
                f"{r['keys_per_s']} |"
            )
    lines += [
        "",
        "| training set | system | seconds | peak RSS MiB | rows | non-null | sum | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["training"]:
        if r.get("error"):
            lines.append(
                f"| {report['training_rows']} x {report['training_features']} | "
                f"{r['system']} | {r['error']} | - | - | - | - | {r.get('goal', '')} | "
                f"{'yes' if r.get('goal_met') else 'no'} |"
            )
        else:
            lines.append(
                f"| {report['training_rows']} x {report['training_features']} | {r['system']} | "
                f"{r['seconds']} | {r['peak_rss_mib']} | {r['rows']} | {r['non_null']} | "
                f"{r['sum']} | {r.get('goal', '')} | "
                f"{'-' if 'goal_met' not in r else ('yes' if r['goal_met'] else 'no')} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=10_000, help="drivers")
    parser.add_argument("--rows-per-entity", type=int, default=10, help="per driver and view")
    parser.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="timed calls per figure and round (a round's p99 is then its 10th slowest call)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    parser.add_argument(
        "--rounds", type=int, default=3, help="of --requests each: figures are the medians"
    )
    parser.add_argument("--training-rows", type=int, default=1_000_000)
    parser.add_argument("--training-features", type=int, default=20)
    parser.add_argument(
        "--stores", default=",".join(STORES), help="mlrig's, comma-separated: " + ", ".join(STORES)
    )
    parser.add_argument(
        "--feast-offline", default=",".join(FEAST_OFFLINE), help="for training sets"
    )
    parser.add_argument("--no-http", dest="http", action="store_false", help="in process only")
    parser.add_argument("--no-training", dest="training", action="store_false")
    parser.add_argument("--no-peer", action="store_true", help="mlrig only: no Feast environment")
    parser.add_argument(
        "--feast-venv", help=f"Feast's environment (default ~/.cache/mlrig-bench/{FEAST_VENV})"
    )
    parser.add_argument("--peer-timeout", type=float, default=600, help="seconds per training set")
    parser.add_argument(
        "--peer-rss-cap-mib", type=float, default=12_288, help="kill a training set above"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--mlrig-redis-db", type=int, default=15)
    parser.add_argument("--feast-redis-db", type=int, default=14)
    parser.add_argument("--data", type=Path, help="where the Parquet files go (reused when alike)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tiny", action="store_true", help="CI: 200 drivers, 20 requests, 2,000 training rows"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="report a failing mlrig store and go on"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--serve-mlrig", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mlrig-historical", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:  # the sizes not given on the command line
        tiny = {"entities": 200, "requests": 20, "warmup": 2, "training_rows": 2000, "rounds": 1}
        tiny["rows_per_entity"] = 5
        for key, value in tiny.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    args.stores = [s for s in args.stores.split(",") if s]
    if unknown := set(args.stores) - set(STORES):
        parser.error(f"unknown store {sorted(unknown)}: use {', '.join(STORES)}")
    args.feast_offline = [s for s in args.feast_offline.split(",") if s]
    if unknown := set(args.feast_offline) - set(FEAST_OFFLINE):
        parser.error(f"unknown Feast offline store {sorted(unknown)}: use file, duckdb")
    if args.training_features > 50:
        parser.error("--training-features: at most 50")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_mlrig:
        serve_mlrig(args.serve_mlrig, args.port)
        return 0
    if args.mlrig_historical:
        print(json.dumps(mlrig_historical_child(json.loads(args.mlrig_historical))))
        return 0
    load_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="mlrig-bench-features-"))
    try:
        report = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_average"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
    missed = [r for r in [*report["online"], *report["training"]] if r.get("goal_met") is False]
    return 1 if args.check and missed else 0


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = args.data or work / "data"
    started = time.perf_counter()
    layout = generate(
        data,
        entities=args.entities,
        rows_per_entity=args.rows_per_entity,
        training_rows=args.training_rows,
        seed=args.seed,
    )
    generated_s = time.perf_counter() - started
    batches = [1, 100]
    keys = {b: request_keys(args.entities, args.requests, b, args.seed + b) for b in batches}
    feast = None
    if not args.no_peer:
        feast = Feast(feast_python(args), work, layout, args)
    report: dict[str, Any] = {
        "layout": layout.to_json(),
        "generate_s": round(generated_s, 2),
        "features_online": len(refs(layout)),
        "batches": batches,
        "requests": args.requests,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "training_rows": args.training_rows,
        "training_features": args.training_features,
        "feast_requirement": None if feast is None else FEAST_REQUIREMENT,
        "feast_version": None,
        "cpus": len(os.sched_getaffinity(0)),
    }
    materialize: list[dict[str, Any]] = []
    stores = []
    feast_online: dict[str, Any] = {}
    phases: dict[str, float] = {}
    try:
        for label in args.stores:
            # Feast's paired store set up and materialised before the first mlrig store
            # compared with it; its reads are timed with each mlrig store's (same minutes)
            online = FEAST_PAIR[label]
            if feast is not None and online not in feast_online:
                phase = time.perf_counter()
                setup = feast.setup(online)
                entry: dict[str, Any] = {"feature_store_yaml": setup["feature_store_yaml"]}
                done = feast.materialize(online)
                materialize.append({"system": "feast", "store": online, **done})
                feast_online[online] = entry
                report["feast_version"] = feast.version
                phases[f"feast {online}"] = round(time.perf_counter() - phase, 1)
            phase = time.perf_counter()
            try:
                row = mlrig_store(label, layout, keys, args, work, feast)
            except Exception as exc:  # one store failing leaves the others' figures
                if not args.keep_going:
                    raise
                stores.append({"store": label, "error": f"{type(exc).__name__}: {exc}"})
                materialize.append({"system": "mlrig", "store": label, "error": str(exc)[:200]})
                continue
            finally:
                phases[f"mlrig {label}"] = round(time.perf_counter() - phase, 1)
            materialize.append({"system": "mlrig", "store": label, **row["materialize"]})
            stores.append(row)
    finally:
        if feast is not None:
            feast.clean()
    report["mlrig"] = {"stores": stores}
    report["feast"] = {"online": feast_online} if feast is not None else None
    report["materialize"] = materialize
    report["online"] = online_rows(report)
    training = []
    if args.training:
        phase = time.perf_counter()
        mine = mlrig_historical(layout, args)
        phases["mlrig training set"] = round(time.perf_counter() - phase, 1)
        met = (
            not mine.get("error")
            and mine["seconds"] < GOAL_TRAIN_S
            and mine["peak_rss_mib"] < GOAL_TRAIN_RSS_MIB
        )
        training.append(
            {
                "system": "mlrig (DuckDB)",
                **mine,
                "goal": f"< {GOAL_TRAIN_S:.0f} s and < {GOAL_TRAIN_RSS_MIB / 1024:.0f} GiB",
                "goal_met": bool(met),
            }
        )
        if feast is not None:
            for offline in args.feast_offline:
                phase = time.perf_counter()
                training.append({"system": f"feast {offline}", **feast.historical(offline)})
                phases[f"feast {offline} training set"] = round(time.perf_counter() - phase, 1)
    report["training"] = training
    report["phases_s"] = phases
    return report


if __name__ == "__main__":
    sys.exit(main())
