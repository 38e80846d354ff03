"""The feature store benchmark's data: seeded Parquet files that mlrig and Feast both read.

Shared by ``bench_features.py`` (mlrig's environment) and ``_feast_side.py`` (Feast's):
only numpy, pandas and pyarrow, which both have.

- One entity, ``driver`` (join key ``driver_id``, int64, 1..N).
- ``views`` feature views ``fv_0``..``fv_{views-1}`` of ``per_view`` float64 features each
  (``v{i}_f{j}``: names unique across the store, as mlrig wants them); 5 x 10 = 50 by default.
  Each view is one Parquet file, ``rows_per_entity`` rows per entity at random event times
  over the 30 days before ``END``, ``created_timestamp`` a few seconds after the event
  (so a few rows per key are corrections with the same event time), a TTL of 90 days:
  every latest value is live.
- The training set's entity rows: ``training_rows`` random (driver_id, event_timestamp)
  pairs in the same 30 days (``entity_df.parquet``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: the data's time window: 30 days up to here (fixed, so every run sees the same data)
END = datetime(2026, 11, 1, tzinfo=UTC)
START = END - timedelta(days=30)
TTL_DAYS = 90
ENTITY = "driver"
JOIN_KEY = "driver_id"


@dataclass(frozen=True)
class Layout:
    """What was generated, and where (``layout.json`` beside the files)."""

    folder: str
    entities: int
    views: int
    per_view: int
    rows_per_entity: int
    training_rows: int
    seed: int

    def view_names(self) -> list[str]:
        return [f"fv_{i}" for i in range(self.views)]

    def features(self, view: int) -> list[str]:
        return [f"v{view}_f{j}" for j in range(self.per_view)]

    def all_features(self) -> list[tuple[str, str]]:
        """Every (view, feature), view by view."""
        return [(f"fv_{i}", f) for i in range(self.views) for f in self.features(i)]

    def view_path(self, view: int) -> Path:
        return Path(self.folder) / f"fv_{view}.parquet"

    @property
    def entity_df_path(self) -> Path:
        return Path(self.folder) / "entity_df.parquet"

    @property
    def rows_per_view(self) -> int:
        return self.entities * self.rows_per_entity

    def training_features(self, count: int) -> list[tuple[str, str]]:
        """The first ``count`` features, view by view (20: all of fv_0 and fv_1)."""
        return self.all_features()[:count]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def generate(
    folder: Path,
    *,
    entities: int,
    views: int = 5,
    per_view: int = 10,
    rows_per_entity: int = 10,
    training_rows: int = 1_000_000,
    seed: int = 0,
) -> Layout:
    """Write the Parquet files under ``folder`` (reused when ``layout.json`` matches)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = Layout(str(folder), entities, views, per_view, rows_per_entity, training_rows, seed)
    marker = folder / "layout.json"
    if marker.exists() and json.loads(marker.read_text()) == layout.to_json():
        return layout
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    span_us = int((END - START).total_seconds() * 1e6)
    start = pd.Timestamp(START)
    n = entities * rows_per_entity
    for i in range(views):
        ids = np.repeat(np.arange(1, entities + 1, dtype=np.int64), rows_per_entity)
        offsets = rng.integers(0, span_us, size=n)
        # one row in 20 repeats its predecessor's event time: a late correction
        same = rng.random(n) < 0.05
        same[0] = False
        same &= ids == np.roll(ids, 1)
        offsets[same] = np.roll(offsets, 1)[same]
        event = start + pd.to_timedelta(offsets, unit="us")
        created = event + pd.to_timedelta(rng.integers(1, 3_600_000_000, size=n), unit="us")
        columns: dict[str, Any] = {
            JOIN_KEY: ids,
            "event_timestamp": event,
            "created_timestamp": created,
        }
        for name in layout.features(i):
            columns[name] = rng.normal(size=n)
        frame = pd.DataFrame(columns)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, layout.view_path(i), row_group_size=256 * 1024)
    ids = rng.integers(1, entities + 1, size=training_rows, dtype=np.int64)
    event = start + pd.to_timedelta(rng.integers(0, span_us, size=training_rows), unit="us")
    entity_df = pd.DataFrame({JOIN_KEY: ids, "event_timestamp": event})
    pq.write_table(pa.Table.from_pandas(entity_df, preserve_index=False), layout.entity_df_path)
    marker.write_text(json.dumps(layout.to_json()))
    return layout


def load_layout(folder: Path) -> Layout:
    return Layout(**json.loads((folder / "layout.json").read_text()))


def request_keys(entities: int, count: int, batch: int, seed: int) -> list[list[int]]:
    """``count`` requests of ``batch`` distinct random driver ids each (seeded: the same
    keys for every system)."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    return [
        sorted(int(k) for k in rng.choice(entities, size=min(batch, entities), replace=False) + 1)
        for _ in range(count)
    ]
