"""Latency of filtered model-version searches with many versions registered.

    python benchmarks/bench_registry_search.py             # 10000 versions, SQLite and PG
    python benchmarks/bench_registry_search.py --databases sqlite --versions 2000 --queries 100
    python benchmarks/bench_registry_search.py --json --explain

For each database (an SQLite file in a temporary folder; a fresh PostgreSQL database on
``--postgres-url``, created and dropped by this script) the script:

1. bulk-inserts ``--versions`` minus ``--register`` versions over ``--models`` models
   (varied frameworks, model types, tags, three creators, seeded uniform accuracy and f1,
   creation times spread over a year) straight through the ORM tables, without
   artifacts: registering ten thousand versions with artifacts would take too long here;
2. registers ``--register`` more versions through ``ModelRegistry.create_version`` with
   two small artifact files each, and reports that as registration throughput;
3. runs each query kind ``--queries`` times, with seeded random parameters, first in
   process (``ModelRegistry.search_versions``, no HTTP), then over HTTP through a uvicorn
   server on loopback with an httpx client and a bearer token, and reports p50 and p99.

Goal: p99 of a filtered list over HTTP under 50 ms. The query plan of each kind
(``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN ANALYZE`` on PostgreSQL) is in the JSON
output and printed for the kinds that miss the goal (all of them with ``--explain``).
PostgreSQL is ``ANALYZE``d after the bulk load, as autovacuum would soon do; SQLite is
left as mlrig leaves it (no ``ANALYZE``). ``--check`` exits 1 when a kind misses the goal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from _common import (  # benchmarks/_common.py
    add_database_options,
    chosen_databases,
    fresh_database,
    percentile,
    server_version,
)

GOAL_P99_MS = 50.0
FAMILIES = (
    "fraud",
    "churn",
    "ranker",
    "vision",
    "speech",
    "nlp",
    "forecast",
    "recsys",
    "anomaly",
    "pricing",
)
FRAMEWORKS = ("sklearn", "pytorch", "tensorflow", "onnx", "xgboost", "lightgbm")
MODEL_TYPES = ("classifier", "regressor", "ranker", "embedding")
TEAMS = ("risk", "growth", "search", "perception", "platform")
ENVS = ("dev", "prod")
USERS = ("alice", "bob", "carol")
STAGES = ("none", "staging", "production", "archived")
STAGE_WEIGHTS = (85, 8, 4, 3)
KINDS = {
    "prefix_framework": "name_prefix=FAMILY- & framework=F",
    "metric_threshold": "metric=accuracy>0.9",
    "tag_creator": "tag=team:T & created_by=U",
    "created_range": "created_after=D & created_before=D+7d",
    "sort_metric": "sort=-metrics.accuracy",
    "second_page": "cursor of page 1 (no filter, framework or team tag)",
    "model_versions": "GET /models/{name}/versions",
}
BATCH = 2000


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


# --- databases --------------------------------------------------------------------------


# --- data -------------------------------------------------------------------------------


class Dataset:
    """The seeded shape of the registry: model names, users, the creation-time span."""

    def __init__(self, models: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.end = datetime.now(timezone.utc).replace(microsecond=0)
        self.start = self.end - timedelta(days=365)
        per_family = max(1, math.ceil(models / len(FAMILIES)))
        self.models = [
            {
                "name": f"{FAMILIES[i // per_family]}-{i % per_family:03d}",
                "framework": self.rng.choice(FRAMEWORKS),
                "model_type": self.rng.choice(MODEL_TYPES),
                "team": self.rng.choice(TEAMS),
            }
            for i in range(models)
        ]
        self.user_ids: dict[str, uuid.UUID] = {}

    def version_fields(self, model: dict[str, Any]) -> dict[str, Any]:
        """Metadata of one version of ``model`` (a tenth of them use another framework)."""
        rng = self.rng
        framework = model["framework"] if rng.random() < 0.9 else rng.choice(FRAMEWORKS)
        return {
            "framework": framework,
            "model_type": model["model_type"],
            "tags": {
                "team": model["team"],
                "env": rng.choice(ENVS),
                "dataset": f"ds-{rng.randrange(20):02d}",
            },
            "params": {
                "learning_rate": round(rng.uniform(1e-4, 0.3), 5),
                "depth": rng.randrange(2, 12),
            },
            "metrics": {"accuracy": rng.random(), "f1": rng.random()},
        }


def bulk_insert(platform: Any, data: Dataset, count: int) -> dict[str, Any]:
    """``count`` versions (and every model) inserted in batches through the ORM tables."""
    from sqlalchemy import insert

    from mlrig.db.models import MLModel, RegisteredModel

    rng = data.rng
    start = time.perf_counter()
    model_ids = {m["name"]: uuid.uuid4() for m in data.models}
    span = (data.end - data.start).total_seconds()
    per_model: dict[str, list[datetime]] = {}
    for _ in range(count):
        name = rng.choice(data.models)["name"]
        per_model.setdefault(name, []).append(data.start + timedelta(seconds=rng.random() * span))
    with platform.db.session() as session:
        session.execute(
            insert(RegisteredModel),
            [
                {
                    "id": model_ids[m["name"]],
                    "name": m["name"],
                    "tags": {"team": m["team"]},
                    "created_by": data.user_ids[rng.choice(USERS)],
                    "created_at": data.start,
                    # the per-model version counter, as the registry keeps it
                    "last_version": len(per_model.get(m["name"], [])),
                }
                for m in data.models
            ],
        )
    rows = []
    for model in data.models:
        for number, created in enumerate(sorted(per_model.get(model["name"], [])), start=1):
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "registered_model_id": model_ids[model["name"]],
                    "name": model["name"],
                    "version": str(number),
                    "created_by": data.user_ids[rng.choice(USERS)],
                    "created_at": created,
                    "updated_at": created,
                    "stage": rng.choices(STAGES, STAGE_WEIGHTS)[0],
                    **data.version_fields(model),
                }
            )
    for first in range(0, len(rows), BATCH):
        with platform.db.session() as session:
            session.execute(insert(MLModel), rows[first : first + BATCH])
    seconds = time.perf_counter() - start
    if platform.db.dialect == "postgresql":
        from sqlalchemy import text

        with platform.db.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    return {
        "rows": len(rows),
        "models": len(data.models),
        "seconds": round(seconds, 2),
        "rows_per_s": round(len(rows) / seconds, 1) if seconds else None,
    }


def register(platform: Any, data: Dataset, count: int) -> dict[str, Any]:
    """``count`` versions through the service, each with two small artifact files."""
    from mlrig.security import Principal

    rng = data.rng
    actors = [Principal(name, "developer", data.user_ids[name]) for name in USERS]
    times = []
    for _ in range(count):
        model = rng.choice(data.models)
        files = {"model.pkl": rng.randbytes(16 * 1024), "requirements.txt": b"scikit-learn\n"}
        start = time.perf_counter()
        platform.registry.create_version(
            model["name"],
            files=files,
            actor=rng.choice(actors),
            create_model=True,
            **data.version_fields(model),
        )
        times.append((time.perf_counter() - start) * 1000)
    total = sum(times) / 1000
    return {
        "versions": count,
        "seconds": round(total, 2),
        "versions_per_s": round(count / total, 1) if total else None,
        "p50_ms": round(statistics.median(times), 1) if times else None,
        "artifacts": "model.pkl (16 KiB) + requirements.txt",
    }


# --- queries ----------------------------------------------------------------------------


def make_queries(platform: Any, data: Dataset, n: int) -> dict[str, list[dict[str, Any]]]:
    """``n`` parameter sets per kind: ``{"path", "params"}`` (HTTP query parameters)."""
    rng = data.rng
    span = (data.end - data.start - timedelta(days=7)).total_seconds()

    def one(kind: str) -> dict[str, Any]:
        path, params = "/api/ml/model-versions", {}
        if kind == "prefix_framework":
            params = {
                "name_prefix": rng.choice(FAMILIES) + "-",
                "framework": rng.choice(FRAMEWORKS),
            }
        elif kind == "metric_threshold":
            params = {"metric": "accuracy>0.9"}
        elif kind == "tag_creator":
            params = {"tag": f"team:{rng.choice(TEAMS)}", "created_by": rng.choice(USERS)}
        elif kind == "created_range":
            after = data.start + timedelta(seconds=rng.random() * span)
            params = {
                "created_after": after.isoformat(),
                "created_before": (after + timedelta(days=7)).isoformat(),
            }
        elif kind == "sort_metric":
            params = {"sort": "-metrics.accuracy"}
        elif kind == "second_page":
            params = rng.choice(
                [{}, {"framework": rng.choice(FRAMEWORKS)}, {"tag": f"team:{rng.choice(TEAMS)}"}]
            )
            cursor = platform.registry.search_versions(to_query(params))["next_cursor"]
            params = {**params, "cursor": cursor} if cursor else params  # tiny runs: no page 2
        else:
            path = f"/api/ml/models/{rng.choice(data.models)['name']}/versions"
        return {"path": path, "params": params}

    return {kind: [one(kind) for _ in range(n)] for kind in KINDS}


def to_query(params: dict[str, Any], model_id: uuid.UUID | None = None) -> Any:
    """The :class:`VersionQuery` the API builds from these query parameters."""
    from mlrig.registry.search import MetricFilter, VersionQuery

    tags = dict([params["tag"].split(":", 1)]) if "tag" in params else {}
    times = {
        k: datetime.fromisoformat(params[k])
        for k in ("created_after", "created_before")
        if k in params
    }
    return VersionQuery(
        model_id=model_id,
        name_prefix=params.get("name_prefix"),
        framework=params.get("framework"),
        tags=tags,
        created_by=params.get("created_by"),
        metrics=(MetricFilter.parse(params["metric"]),) if "metric" in params else (),
        sort=params.get("sort", "-created_at"),
        cursor=params.get("cursor"),
        **times,
    )


def in_process(platform: Any, query: dict[str, Any]) -> int:
    """Run ``query`` through the service; the number of items returned."""
    model_id = None
    if query["path"].startswith("/api/ml/models/"):
        model_id = platform.registry.model_id(query["path"].split("/")[4])
    return len(platform.registry.search_versions(to_query(query["params"], model_id))["items"])


def timed(
    run: Callable[[dict[str, Any]], int], queries: list[dict[str, Any]], warmup: int
) -> tuple[list[float], list[int]]:
    for query in queries[:warmup]:
        run(query)
    ms, counts = [], []
    for query in queries:
        start = time.perf_counter()
        counts.append(run(query))
        ms.append((time.perf_counter() - start) * 1000)
    return ms, counts


@contextlib.contextmanager
def capture_plans(platform: Any) -> Iterator[list[str]]:
    """Collect the plan of every SELECT on ml_models run inside the block."""
    from sqlalchemy import event

    engine, lines = platform.db.engine, []
    sqlite = platform.db.dialect == "sqlite"
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, BUFFERS) "

    def before(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM ml_models" in statement:
            cursor.execute(prefix + statement, parameters)
            rows = cursor.fetchall()
            if not sqlite:
                lines.extend(row[0] for row in rows)
                return
            depth: dict[int, int] = {}
            for node, parent, _, detail in rows:  # (id, parent, notused, detail)
                depth[node] = depth.get(parent, -1) + 1
                lines.append("  " * depth[node] + detail)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield lines
    finally:
        event.remove(engine, "before_cursor_execute", before)


def run_database(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from httpx import Client

    from mlrig.api import create_app
    from mlrig.testing.fixtures import make_platform, serve

    with fresh_database(kind, tmp / "sqlite", args.postgres_url) as url:
        platform = make_platform(tmp / kind / "home", database={"url": url})
        try:
            data = Dataset(args.models, args.seed)
            for name in USERS:
                data.user_ids[name] = uuid.UUID(
                    platform.security.create_user(name=name, role="developer")["id"]
                )
            token = platform.security.create_token(user=USERS[0])["token"]
            n_register = min(args.register, args.versions)
            bulk = bulk_insert(platform, data, args.versions - n_register)
            registration = register(platform, data, n_register)
            queries = make_queries(platform, data, args.queries)
            results = {}
            for name, batch in queries.items():
                ms, counts = timed(lambda q: in_process(platform, q), batch, args.warmup)
                with capture_plans(platform) as plan:
                    in_process(platform, batch[0])
                results[name] = {
                    "kind": name,
                    "query": KINDS[name],
                    "example": batch[0],
                    "mean_items": round(statistics.fmean(counts), 1),
                    "service": summary(ms),
                    "plan": plan,
                    "_service": ms,
                }
            with (
                serve(create_app(platform)) as base,
                Client(
                    base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
                ) as client,
            ):

                def over_http(query: dict[str, Any]) -> int:
                    response = client.get(query["path"], params=query["params"])
                    if response.status_code != 200:
                        msg = f"{query}: HTTP {response.status_code}: {response.text[:500]}"
                        raise SystemExit(msg)
                    return len(response.json()["items"])

                for name, batch in queries.items():
                    ms, _ = timed(over_http, batch, args.warmup)
                    row = results[name]
                    row["http"] = summary(ms)
                    row["http_overhead_p50_ms"] = round(
                        row["http"]["p50_ms"] - row["service"]["p50_ms"], 2
                    )
                    row["goal_met"] = row["http"]["p99_ms"] < GOAL_P99_MS
                    row["_http"] = ms
            everything = {
                side: [t for r in results.values() for t in r.pop(f"_{side}")]
                for side in ("service", "http")
            }
            return {
                "database": kind,
                "server": server_version(platform.db),
                "versions": bulk["rows"] + n_register,
                "models": len(data.models),
                "bulk_insert": bulk,
                "registration": registration,
                "queries_per_kind": args.queries,
                "limit": 50,
                "kinds": list(results.values()),
                "overall": {side: summary(ms) for side, ms in everything.items()}
                | {"goal_met": all(r["goal_met"] for r in results.values())},
            }
        finally:
            platform.close()


# --- output -----------------------------------------------------------------------------


def _table(report: dict[str, Any], explain: bool) -> str:
    lines = []
    for db in report["databases"]:
        bulk, reg = db["bulk_insert"], db["registration"]
        lines += [
            f"== {db['database']} ({db['server']}): {db['versions']} versions over "
            f"{db['models']} models",
            f"bulk insert through the ORM tables, no artifacts: {bulk['rows']} rows in "
            f"{bulk['seconds']} s ({bulk['rows_per_s']} rows/s)",
            f"registration through the service with artifacts: {reg['versions']} versions in "
            f"{reg['seconds']} s = {reg['versions_per_s']} versions/s (p50 {reg['p50_ms']} ms)",
            f"{db['queries_per_kind']} queries per kind, limit {db['limit']}; "
            f"goal: HTTP p99 < {report['goal_p99_ms']:.0f} ms",
        ]
        head = (
            f"{'kind':<17} {'items':>6} {'service p50':>12} {'p99':>8} {'HTTP p50':>9} "
            f"{'p99':>8}  goal"
        )
        lines += [head, "-" * len(head)]
        rows = [*db["kinds"], {"kind": "overall", "mean_items": None, **db["overall"]}]
        for r in rows:
            items = "" if r["mean_items"] is None else f"{r['mean_items']:.0f}"
            lines.append(
                f"{r['kind']:<17} {items:>6} {r['service']['p50_ms']:>12.1f} "
                f"{r['service']['p99_ms']:>8.1f} {r['http']['p50_ms']:>9.1f} "
                f"{r['http']['p99_ms']:>8.1f}  {'ok' if r['goal_met'] else 'MISSED'}"
            )
        for r in db["kinds"]:
            if explain or not r["goal_met"]:
                lines.append(f"plan of {r['kind']} ({r['query']}):")
                lines += [f"    {line}" for line in r["plan"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=10_000, help="versions in all")
    parser.add_argument("--models", type=int, default=200, help="models they are spread over")
    parser.add_argument(
        "--register",
        type=int,
        default=None,
        help="of which registered through the service with artifacts "
        "(default: 200, or a tenth of --versions if less)",
    )
    parser.add_argument("--queries", type=int, default=500, help="timed queries per kind")
    parser.add_argument("--warmup", type=int, default=5, help="untimed queries per kind first")
    add_database_options(parser)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--explain", action="store_true", help="print every kind's plan")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a kind misses the goal")
    args = parser.parse_args(argv)
    kinds = chosen_databases(parser, args)
    if args.versions < 1 or args.models < 1 or args.queries < 1:
        parser.error("--versions, --models and --queries must be at least 1")
    if args.register is None:
        args.register = min(200, args.versions // 10)
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-") as tmp:
        report = {
            "goal_p99_ms": GOAL_P99_MS,
            "seed": args.seed,
            "databases": [run_database(kind, args, Path(tmp)) for kind in kinds],
        }
    print(json.dumps(report, indent=2) if args.json else _table(report, args.explain))
    missed = [db for db in report["databases"] if not db["overall"]["goal_met"]]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
