"""Latency of fetching one long metric history through the REST API.

    python benchmarks/bench_metric_history.py          # 100,000 points, SQLite and PG
    python benchmarks/bench_metric_history.py --databases sqlite --fetches 20
    python benchmarks/bench_metric_history.py --points 1000 --fetches 3 --json

For each database (an SQLite file in a temporary folder; a fresh PostgreSQL database on
``--postgres-url``, created and dropped by this script) the script creates one experiment
and writes, through ``mlrig.experiments.metrics.write_points`` in batches of ``--batch``,
``--points`` points of the metric ``loss`` (steps 0..N-1, kind ``train``) and as many of
``val_loss`` (kind ``validation``), interleaved as a trainer logs them, so that the
fetch has to pick one metric out of two. It then fetches ``loss``:

- **in process** ``--fetches`` times: ``platform.experiments.metrics(id, name="loss")``,
  what the route calls (the SQL and the columnar transposition, no HTTP);
- **over HTTP** ``--fetches`` times: ``GET /api/ml/experiments/{id}/metrics?name=loss``
  served by uvicorn on loopback (``mlrig.testing.fixtures.serve``, in this process) to
  an httpx client in a process of its own (this script again), with a bearer token,
  timed until the last byte of the body is read; the client's ``json.loads`` of the
  body is timed apart (``decode``).

``--warmup`` untimed fetches go first on each side. ``--fields steps,values`` makes the
HTTP fetches ask for those columns only (what a plot needs). Goal: HTTP p99 under 200 ms for a
100,000-point history; ``--check`` exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (  # benchmarks/_common.py
    add_database_options,
    chosen_databases,
    fresh_database,
    server_version,
    summary,
)

GOAL_MS = 200.0


def write_history(platform: Any, experiment_id: str, points: int, batch: int) -> dict[str, Any]:
    """``points`` of ``loss`` and of ``val_loss``, interleaved, through write_points."""
    from mlrig.experiments import metrics

    written, seconds = 0, 0.0
    for first in range(0, points, batch):
        rows = []
        for step in range(first, min(first + batch, points)):
            rows.append(("loss", 2.0 / (1.0 + step), step, step // 1000, "train"))
            rows.append(("val_loss", 2.5 / (1.0 + step), step, step // 1000, "validation"))
        start = time.perf_counter()
        written += metrics.write_points(platform.db, experiment_id, rows)
        seconds += time.perf_counter() - start
    return {
        "points": written,
        "seconds": round(seconds, 2),
        "points_per_s": round(written / seconds) if seconds else None,
    }


def timed(fetch: Callable[[], Any], fetches: int, warmup: int) -> tuple[list[float], Any]:
    result = None
    for _ in range(warmup):
        result = fetch()
    ms = []
    for _ in range(fetches):
        start = time.perf_counter()
        result = fetch()
        ms.append((time.perf_counter() - start) * 1000)
    return ms, result


def fetch_in_a_client_process(
    base: str, experiment: str, token: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Run this script as the HTTP client (``--fetch-from``) in a process of its own, as a
    real client is: in the server's process it would share the server's GIL."""
    command = [
        sys.executable,
        __file__,
        "--fetch-from",
        base,
        "--experiment",
        experiment,
        "--token",
        token,
        "--fetches",
        str(args.fetches),
        "--warmup",
        str(args.warmup),
        *(["--fields", args.fields] if args.fields else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        msg = f"the HTTP client failed:\n{done.stderr[-3000:]}"
        raise SystemExit(msg)
    return json.loads(done.stdout)


def client(args: argparse.Namespace) -> dict[str, Any]:
    """The client process: ``--fetches`` timed GETs of ``loss``, then the decode times."""
    from httpx import Client

    headers = {"Authorization": f"Bearer {args.token}"}
    with Client(base_url=args.fetch_from, headers=headers, timeout=60) as http:

        def over_http() -> bytes:
            params = {"name": "loss", **({"fields": args.fields} if args.fields else {})}
            response = http.get(f"/api/ml/experiments/{args.experiment}/metrics", params=params)
            if response.status_code != 200:
                msg = f"HTTP {response.status_code}: {response.text[:500]}"
                raise SystemExit(msg)
            return response.content

        http_ms, body = timed(over_http, args.fetches, args.warmup)
    decode_ms, data = timed(lambda: json.loads(body), args.fetches, 0)
    return {
        "http_ms": http_ms,
        "decode_ms": decode_ms,
        "body_bytes": len(body),
        "count": data["count"],
        "last_step": data["metrics"]["loss"]["steps"][-1],
        "fields": sorted(data["metrics"]["loss"]),
    }


def run_database(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:

    from mlrig.api import create_app
    from mlrig.security import Principal
    from mlrig.testing.fixtures import make_platform, serve

    with fresh_database(kind, tmp / kind, args.postgres_url) as url:
        platform = make_platform(tmp / kind / "home", database={"url": url})
        try:
            user = platform.security.create_user(name="bench", role="developer")
            token = platform.security.create_token(user="bench")["token"]
            actor = Principal("bench", "developer", uuid.UUID(user["id"]))
            experiment = platform.experiments.create(
                name="history", trainer="sklearn", actor=actor
            )["id"]
            written = write_history(platform, experiment, args.points, args.batch)

            def in_process() -> int:
                return platform.experiments.metrics(experiment, name="loss")["count"]

            service_ms, count = timed(in_process, args.fetches, args.warmup)
            if count != args.points:
                msg = f"the service returned {count} points of loss, expected {args.points}"
                raise SystemExit(msg)
            with serve(create_app(platform)) as base:
                fetched = fetch_in_a_client_process(base, experiment, token, args)
            http_ms, decode_ms = fetched["http_ms"], fetched["decode_ms"]
            if fetched["count"] != args.points or fetched["last_step"] != args.points - 1:
                msg = f"HTTP returned {fetched['count']} points of loss, expected {args.points}"
                raise SystemExit(msg)
            http = summary(http_ms)
            return {
                "database": kind,
                "server": server_version(platform.db),
                "points": args.points,
                "stored_points": written["points"],
                "write": written,
                "fetches": args.fetches,
                "body_bytes": fetched["body_bytes"],
                "service": summary(service_ms),
                "http": http,
                "http_fields": fetched["fields"],
                "client_decode": summary(decode_ms),
                "goal_met": http["p99_ms"] < GOAL_MS,
                "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared
            }
        finally:
            platform.close()


def _table(report: dict[str, Any]) -> str:
    head = (
        f"{'database':<11} {'points':>8} {'MiB':>6} {'service p50':>12} {'p99':>7} "
        f"{'HTTP p50':>9} {'p99':>7} {'decode p50':>11}  goal (HTTP p99 < "
        f"{report['goal_ms']:.0f} ms)"
    )
    lines = [head, "-" * len(head)]
    for r in report["databases"]:
        lines.append(
            f"{r['database']:<11} {r['points']:>8} {r['body_bytes'] / 2**20:>6.1f} "
            f"{r['service']['p50_ms']:>12.1f} {r['service']['p99_ms']:>7.1f} "
            f"{r['http']['p50_ms']:>9.1f} {r['http']['p99_ms']:>7.1f} "
            f"{r['client_decode']['p50_ms']:>11.1f}  {'ok' if r['goal_met'] else 'MISSED'}"
        )
    for r in report["databases"]:
        lines.append(f"{r['database']}: HTTP fetches returned {', '.join(r['http_fields'])}")
        w = r["write"]
        lines.append(
            f"{r['database']}: wrote {w['points']:,} points ({r['points']:,} of loss) "
            f"through write_points in {w['seconds']} s ({w['points_per_s']:,} points/s)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--points",
        type=int,
        default=100_000,
        help="points in the fetched history (as many of a second metric)",
    )
    parser.add_argument("--batch", type=int, default=10_000, help="steps per write_points call")
    parser.add_argument("--fetches", type=int, default=100, help="timed fetches per side")
    parser.add_argument("--warmup", type=int, default=3, help="untimed fetches first")
    add_database_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    parser.add_argument(
        "--fields",
        help="the HTTP fetches ask for these columns only (e.g. steps,values; default all)",
    )
    parser.add_argument("--fetch-from", help=argparse.SUPPRESS)  # the client process
    parser.add_argument("--experiment", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fields is not None and "steps" not in args.fields.split(","):
        parser.error("--fields must include steps (the script checks the last step)")
    if args.fetch_from:
        print(json.dumps(client(args)))
        return 0
    kinds = chosen_databases(parser, args)
    if args.points < 1 or args.batch < 1 or args.fetches < 1 or args.warmup < 0:
        parser.error("--points, --batch and --fetches must be at least 1, --warmup at least 0")
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-") as tmp:
        report = {
            "goal_ms": GOAL_MS,
            "databases": [run_database(kind, args, Path(tmp)) for kind in kinds],
        }
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 1 if args.check and not all(r["goal_met"] for r in report["databases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
