"""Online reads (read_online: one store call per view, missing per row, typed keys),
on-demand functions (import strings only, exactly the declared columns) and per-feature
statistics against pandas."""

import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from mlrig.contracts.online_store import OnlineRow
from mlrig.errors import ValidationError
from mlrig.features.online import encode_key, read_online
from mlrig.features.spec import (
    EntitySpec,
    FeatureSpec,
    FeatureViewSpec,
    OnDemandViewSpec,
    SourceSpec,
)
from mlrig.testing.online_store import at

DRIVER = EntitySpec("driver", ("driver_id",))
TRIP = EntitySpec("trip_kind", ("kind",))
SOURCE = SourceSpec(kind="push")


def _view(name, features, entities=(DRIVER,), ttl=None):
    return FeatureViewSpec(
        name=name,
        entities=tuple(entities),
        source=SOURCE,
        features=tuple(FeatureSpec(f, "numerical") for f in features),
        ttl_seconds=ttl,
    )


class CountingStore:
    """An in-memory online store that counts its read calls."""

    def __init__(self):
        self.rows = {}
        self.reads = []

    def write(self, view, rows, *, ttl_seconds=None):
        for row in rows:
            self.rows[(view, row.key)] = row
        return len(rows)

    def read(self, view, keys, features, *, ttl_seconds, now):
        self.reads.append((view, list(keys)))
        out = []
        for key in keys:
            row = self.rows.get((view, key))
            live = row is not None and (
                ttl_seconds is None or row.event_timestamp >= now - timedelta(seconds=ttl_seconds)
            )
            out.append({f: row.values.get(f) for f in features} if live else None)
        return out


def test_encode_key_types():
    assert encode_key([17, "a", True, 3.0]) == ("17", "a", "true", "3")
    import numpy as np

    assert encode_key([np.int64(5), np.float64(2.0)]) == ("5", "2")
    for bad in (None, float("nan"), object()):
        with pytest.raises(ValidationError):
            encode_key([bad])


def test_read_online_one_call_per_view_and_missing_per_row():
    store = CountingStore()
    stats = _view("stats", ["a", "b"], ttl=60)
    other = _view("other", ["c"], entities=(DRIVER, TRIP))
    store.write("stats", [OnlineRow(("1",), {"a": 1, "b": None}, at(0))])
    store.write("stats", [OnlineRow(("2",), {"a": 2, "b": 2}, at(-3600))])  # expired
    store.write("other", [OnlineRow(("1", "x"), {"c": "c1"}, at(0))])
    rows = [
        {"driver_id": 1, "kind": "x"},
        {"driver_id": 2, "kind": "x"},
        {"driver_id": 3, "kind": "y"},
    ]
    values, missing = read_online(store, [(stats, ["a", "b"]), (other, ["c"])], rows, now=at(10))
    assert [v for v, _ in store.reads] == ["stats", "other"]
    assert store.reads[1][1] == [("1", "x"), ("2", "x"), ("3", "y")]
    assert values == [
        {"a": 1, "b": None, "c": "c1"},
        {"a": None, "b": None, "c": None},
        {"a": None, "b": None, "c": None},
    ]
    # a stored None is a value, not a missing row
    assert missing == [[], ["a", "b", "c"], ["a", "b", "c"]]


def test_read_online_reads_many_views_in_one_call_where_the_store_can(platform):
    store = platform.online_store
    calls = []
    read_many = store.read_many

    def counting(reads, *, now):
        calls.append([r.view for r in reads])
        return read_many(reads, now=now)

    store.read_many = counting
    stats, other = _view("stats", ["a"], ttl=60), _view("other", ["c"])
    store.write("stats", [OnlineRow(("1",), {"a": 1}, at(0)), OnlineRow(("2",), {"a": 2}, at(-99))])
    store.write("other", [OnlineRow(("2",), {"c": "c2"}, at(0))])
    rows = [{"driver_id": 1}, {"driver_id": 2}]
    values, missing = read_online(store, [(stats, ["a"]), (other, ["c"])], rows, now=at(10))
    assert calls == [["stats", "other"]]
    assert values == [{"a": 1, "c": None}, {"a": None, "c": "c2"}]
    assert missing == [["c"], ["a"]]


def test_read_online_refuses_a_row_without_its_join_key():
    with pytest.raises(ValidationError, match="entity row 1 has no value for join key 'driver_id'"):
        read_online(CountingStore(), [(_view("s", ["a"]), ["a"])], [{"driver_id": 1}, {"x": 2}])


@pytest.fixture
def odfv_module(tmp_path, monkeypatch):
    (tmp_path / "odfv_funcs.py").write_text(
        textwrap.dedent(
            """
            import pandas as pd

            def ratio(df):
                return pd.DataFrame({"ratio": df["a"] / df["amount"]})

            def wrong(df):
                return pd.DataFrame({"ratio": df["a"], "extra": 1})

            def boom(df):
                raise RuntimeError("no way")

            from os import system
            from subprocess import call
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from mlrig.features.ondemand import forget_functions

    forget_functions()
    yield "odfv_funcs"
    forget_functions()
    sys.modules.pop("odfv_funcs", None)


def _odfv(function):
    return OnDemandViewSpec(
        name="derived",
        function=function,
        inputs=("stats:a",),
        features=(FeatureSpec("ratio", "numerical"),),
        request_fields={"amount": "numerical"},
    )


def test_on_demand_view_in_an_online_read(odfv_module):
    store = CountingStore()
    stats = _view("stats", ["a", "b"])
    store.write("stats", [OnlineRow(("1",), {"a": 6.0, "b": 1}, at(0))])
    rows = [{"driver_id": 1, "amount": 3.0}, {"driver_id": 2, "amount": 1.0}]

    def resolve(refs):
        assert refs == ["stats:a"]
        return [(stats, ["a"])]

    values, missing = read_online(
        store, [(_odfv(f"{odfv_module}:ratio"), ["ratio"]), (stats, ["b"])], rows, resolve=resolve
    )
    assert values == [{"ratio": 2.0, "b": 1}, {"ratio": None, "b": None}]  # the input is dropped
    assert missing == [[], ["b", "ratio"]]
    assert len(store.reads) == 2  # stats for b, stats for the hidden input a


def test_apply_on_demand_checks_function_and_columns(odfv_module):
    import pandas as pd

    from mlrig.features.ondemand import apply_on_demand

    frame = pd.DataFrame({"a": [1.0, 4.0], "amount": [2.0, 2.0]})
    assert apply_on_demand(_odfv(f"{odfv_module}:ratio"), frame)["ratio"].tolist() == [0.5, 2.0]
    with pytest.raises(ValidationError, match="exactly the columns ratio; not declared: extra"):
        apply_on_demand(_odfv(f"{odfv_module}:wrong"), frame)
    with pytest.raises(ValidationError, match="raised RuntimeError: no way"):
        apply_on_demand(_odfv(f"{odfv_module}:boom"), frame)
    with pytest.raises(ValidationError, match="file paths are not accepted"):
        apply_on_demand(_odfv("/tmp/odfv_funcs.py:ratio"), frame)
    with pytest.raises(ValidationError, match="has no 'nope'"):
        apply_on_demand(_odfv(f"{odfv_module}:nope"), frame)
    with pytest.raises(ValidationError, match="does not import"):
        apply_on_demand(_odfv("no_such_module_xyz:f"), frame)


@pytest.mark.parametrize(
    "reference",
    [
        "subprocess:call",
        "os:system",
        "builtins:exec",
        "shutil:rmtree",
        "pickle:loads",
        "pandas:read_pickle",
        "mlrig.features.ondemand:load_function",
        "odfv_funcs:system",  # re-exported from os
        "odfv_funcs:call",  # re-exported from subprocess
    ],
)
def test_functions_that_could_run_anything_are_refused(odfv_module, reference, tmp_path):
    import pandas as pd

    from mlrig.features.ondemand import apply_on_demand

    marker = tmp_path / "rce_marker"
    frame = pd.DataFrame({"touch": [str(marker)], str(marker): [1]})
    refused = r"cannot be (an )?on-demand transformation|not a Python"
    with pytest.raises(ValidationError, match=refused):
        apply_on_demand(_odfv(reference), frame)
    assert not marker.exists()


def test_the_online_path_imports_no_pandas(tmp_path):
    """A read of stored features (no on-demand view) through the sql store imports
    neither pandas nor pyarrow."""
    code = textwrap.dedent(
        f"""
        import sys
        from mlrig.testing.fixtures import make_platform
        from mlrig.features.online import read_online
        from mlrig.features.spec import EntitySpec, FeatureSpec, FeatureViewSpec, SourceSpec
        from mlrig.contracts.online_store import OnlineRow
        from datetime import datetime, timezone
        platform = make_platform(__import__("pathlib").Path({str(tmp_path)!r}))
        view = FeatureViewSpec("v", (EntitySpec("d", ("d",)),), SourceSpec("push"),
                               (FeatureSpec("a", "numerical"),))
        now = datetime.now(timezone.utc)
        platform.online_store.write("v", [OnlineRow(("1",), {{"a": 1}}, now)])
        values, missing = read_online(platform.online_store, [(view, ["a"])], [{{"d": 1}}])
        assert values == [{{"a": 1}}], values
        heavy = [m for m in ("pandas", "pyarrow", "duckdb", "numpy") if m in sys.modules]
        print("HEAVY", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_statistics_match_pandas():
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from mlrig.features.stats import QUANTILES, table_statistics

    rng = np.random.default_rng(4)
    n = 5000
    x = rng.normal(10, 3, n)
    x[rng.choice(n, 200, replace=False)] = np.nan
    ints = pd.array(rng.integers(0, 100, n), dtype="Int64")
    ints[rng.choice(n, 50, replace=False)] = pd.NA
    city = pd.Series(rng.choice(["paris", "rome", "oslo", None], n, p=[0.5, 0.3, 0.15, 0.05]))
    flag = pd.Series(rng.random(n) < 0.3)
    frame = pd.DataFrame({"x": x, "ints": ints, "city": city, "flag": flag})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    stats = table_statistics(
        table, {"x": "numerical", "ints": "numerical", "city": "categorical", "flag": "boolean"}
    )
    for name in ("x", "ints"):
        col = frame[name].astype("float64")
        s = stats[name]
        assert (s["rows"], s["count"], s["nulls"]) == (n, col.count(), col.isna().sum())
        assert s["min"] == pytest.approx(col.min())
        assert s["max"] == pytest.approx(col.max())
        assert s["mean"] == pytest.approx(col.mean())
        assert s["std"] == pytest.approx(col.std())
        for q_name, q in QUANTILES.items():
            assert s["quantiles"][q_name] == pytest.approx(col.quantile(q)), q_name
    counts = frame["city"].value_counts()
    assert stats["city"]["nulls"] == frame["city"].isna().sum()
    assert stats["city"]["distinct"] == 3
    assert [(t["value"], t["count"]) for t in stats["city"]["top"]] == list(counts.items())
    assert stats["flag"]["mean"] == pytest.approx(flag.mean())
    assert {t["value"]: t["count"] for t in stats["flag"]["top"]} == flag.value_counts().to_dict()
    import json

    json.dumps(stats, allow_nan=False)  # stored as JSON: plain values, no NaN
