"""Feast's side of ``bench_features.py``, run by the python of Feast's own virtual environment.

    python _feast_side.py COMMAND '{"json": "arguments"}'

prints one JSON object on stdout. Commands:

- ``setup``: writes ``feature_store.yaml`` into ``repo`` (project ``project``, a file
  registry, the ``online`` store: ``sqlite`` (a file in the repo) or ``redis``
  (``redis_host``, ``redis_port``, ``redis_db``), the ``offline`` store: ``file``
  (Feast's default, pandas/dask) or ``duckdb``) and applies the entity and the feature
  views over the benchmark's Parquet files (``_features_data.Layout``);
- ``materialize``: ``store.materialize(START, END + 1 s)`` of every view, timed;
- ``online``: ``store.get_online_features(features, entity_rows).to_dict()`` for each of
  ``keys`` (lists of driver ids), timed per call after ``warmup`` calls, plus a checksum
  of the values of the first request (compared with mlrig's); ``rounds`` times over
  (``ms``: one list per round);
- ``historical``: ``store.get_historical_features(entity_df, features).to_df()`` over the
  entity rows' Parquet file, timed, with this process's peak RSS (``ru_maxrss``).
- ``clean_redis``: deletes this project's keys from the Redis database.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _features_data import END, ENTITY, JOIN_KEY, START, TTL_DAYS, load_layout


def yaml_text(args: dict[str, Any]) -> str:
    repo = Path(args["repo"])
    if args["online"] == "sqlite":
        online = f"  type: sqlite\n  path: {repo / 'online.db'}\n"
    else:
        address = f"{args['redis_host']}:{args['redis_port']},db={args['redis_db']}"
        online = f'  type: redis\n  connection_string: "{address}"\n'
    return (
        f"project: {args['project']}\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        f"online_store:\n{online}"
        f"offline_store:\n  type: {args['offline']}\n"
        "entity_key_serialization_version: 3\n"
    )


def definitions(layout: Any) -> list[Any]:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    driver = Entity(name=ENTITY, join_keys=[JOIN_KEY], value_type=ValueType.INT64)
    objects: list[Any] = [driver]
    for i, view in enumerate(layout.view_names()):
        source = FileSource(
            name=f"{view}_source",
            path=str(layout.view_path(i)),
            timestamp_field="event_timestamp",
            created_timestamp_column="created_timestamp",
        )
        objects.append(
            FeatureView(
                name=view,
                entities=[driver],
                ttl=timedelta(days=TTL_DAYS),
                schema=[Field(name=f, dtype=Float64) for f in layout.features(i)],
                source=source,
                online=True,
            )
        )
    return objects


def store_of(args: dict[str, Any]) -> Any:
    from feast import FeatureStore

    return FeatureStore(repo_path=args["repo"])


def setup(args: dict[str, Any]) -> dict[str, Any]:
    import feast

    repo = Path(args["repo"])
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(yaml_text(args))
    layout = load_layout(Path(args["data"]))
    store = store_of(args)
    started = time.perf_counter()
    store.apply(definitions(layout))
    return {
        "version": feast.__version__,
        "apply_s": round(time.perf_counter() - started, 3),
        "feature_store_yaml": (repo / "feature_store.yaml").read_text(),
    }


def materialize(args: dict[str, Any]) -> dict[str, Any]:
    layout = load_layout(Path(args["data"]))
    store = store_of(args)
    started = time.perf_counter()
    store.materialize(start_date=START, end_date=END + timedelta(seconds=1))
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


def checksum(values: dict[str, list[Any]], features: list[str]) -> dict[str, Any]:
    total, found = 0.0, 0
    for name in features:
        for value in values[name]:
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                total += value
                found += 1
    return {"sum": round(total, 6), "values": found}


def online(args: dict[str, Any]) -> dict[str, Any]:
    store = store_of(args)
    refs = args["features"]  # "view:name"
    names = [r.split(":", 1)[1] for r in refs]
    keys = args["keys"]

    def call(batch: list[int]) -> dict[str, list[Any]]:
        rows = [{JOIN_KEY: k} for k in batch]
        return store.get_online_features(features=refs, entity_rows=rows).to_dict()

    for batch in keys[: args["warmup"]]:
        call(batch)
    first = call(keys[0])
    rounds = []
    for _ in range(args.get("rounds", 1)):
        ms = []
        for batch in keys:
            started = time.perf_counter()
            call(batch)
            ms.append((time.perf_counter() - started) * 1000)
        rounds.append(ms)
    return {"ms": rounds, "check": checksum(first, names)}


def historical(args: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    layout = load_layout(Path(args["data"]))
    store = store_of(args)
    refs = args["features"]
    started = time.perf_counter()
    entity_df = pd.read_parquet(layout.entity_df_path)
    frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    seconds = time.perf_counter() - started
    names = [r.split(":", 1)[1] for r in refs]
    return {
        "seconds": round(seconds, 3),
        "rows": len(frame),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "non_null": int(frame[names].notna().sum().sum()),
        "sum": round(float(frame[names].sum().sum()), 3),
    }


def clean_redis(args: dict[str, Any]) -> dict[str, Any]:
    import redis

    client = redis.Redis(host=args["redis_host"], port=args["redis_port"], db=args["redis_db"])
    deleted = 0
    for key in client.scan_iter(match=f"*{args['project']}*".encode(), count=1000):
        deleted += client.delete(key)
    return {"deleted": deleted}


COMMANDS = {
    "setup": setup,
    "materialize": materialize,
    "online": online,
    "historical": historical,
    "clean_redis": clean_redis,
}


if __name__ == "__main__":
    command, raw = sys.argv[1], sys.argv[2]
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text()
    result = COMMANDS[command](json.loads(raw))
    print(json.dumps(result))
