"""The shared input rules (mlrig.validation) and where they hold: the services' entry
points (what the CLI and Python callers meet) and the database guard, on SQLite and
PostgreSQL. The REST side is in test_api_input_rules.py."""

import json
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from mlrig import validation as v
from mlrig.errors import ValidationError
from mlrig.security import Principal

NUL = "a\x00b"
SURROGATE = "a\ud800b"
ADMIN = Principal(name="local", role="admin")


def _nested(depth):
    value = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# --- the rules themselves -----------------------------------------------------------------


@pytest.mark.parametrize("text", [NUL, SURROGATE, "\udfff", "\ud83d\ude00"])
def test_unstorable_text_is_refused(text):
    with pytest.raises(ValidationError, match=r"NUL|surrogate"):
        v.check_text(text, field="name")
    assert v.find_bad_text("tab\tnew\nline é 😀") is None


def test_integers_are_bounded_to_64_bits():
    assert v.check_int(2**63 - 1, field="offset") == 2**63 - 1
    for bad in (2**63, -(2**63) - 1, 10**400, True, 1.0):
        with pytest.raises(ValidationError, match="offset must be an integer"):
            v.check_int(bad, field="offset")


def test_naive_datetimes_are_utc_and_the_range_is_checked():
    naive = datetime(2026, 1, 1, 12)
    assert v.as_utc(naive, field="since") == naive.replace(tzinfo=timezone.utc)
    paris = datetime(2026, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    assert v.as_utc(paris, field="since") == naive.replace(tzinfo=timezone.utc)
    plus = timezone(timedelta(hours=5))
    minus = timezone(timedelta(hours=-5))
    for bad in (
        datetime(1, 1, 1, tzinfo=plus),  # before year 1 in UTC
        datetime(9999, 12, 31, 23, tzinfo=minus),  # after 9999 in UTC
        datetime(1, 1, 1),  # within a day of the edge: a session time zone would overflow
        datetime(9999, 12, 31),
    ):
        with pytest.raises(ValidationError, match="out of range"):
            v.as_utc(bad, field="since")


def test_json_documents_are_bounded():
    assert v.check_json(_nested(v.MAX_JSON_DEPTH), field="p") == _nested(v.MAX_JSON_DEPTH)
    assert v.check_json({"lr": 1e-30, "x": 12345.678, "n": 2.0**62}, field="p")
    with pytest.raises(ValidationError, match="deeper than 32"):
        v.check_json(_nested(v.MAX_JSON_DEPTH + 1), field="p")
    with pytest.raises(ValidationError, match="deeper"):
        v.check_json(_nested(100_000), field="p")  # no RecursionError: the walk is a loop
    cases = [
        ({"a": [1, {"b": NUL}]}, r"p\.a\[1\]\.b: contains a NUL"),
        ({SURROGATE: 1}, "key contains a lone UTF-16 surrogate"),
        ({"a": float("nan")}, "no NaN"),
        ({"a": 2**64}, "64 bits"),
        ({"a": [1.7851222110343262e27]}, "64 bits"),  # a JSON integer to JSON Schema
        ({"a": object()}, "not a JSON value"),
        ({"a": "x" * (v.MAX_JSON_BYTES + 1)}, "characters of text|bytes of JSON"),
        ({str(i): i for i in range(v.MAX_JSON_KEYS + 1)}, "at most 1000"),
        ([1], "must be a JSON object"),
    ]
    for value, match in cases:
        with pytest.raises(ValidationError, match=match):
            v.check_json(value, field="p")


def test_lists_of_strings_are_checked_as_every_string_is():
    """A list of strings is searched in one go; a bad one is still found and named, and
    its characters still count towards ``max_chars``."""
    names = [f"view:feature_{i}" for i in range(50)]
    assert v.json_problem({"features": names}, max_depth=8) is None
    for bad, what in (("a\x00b", "NUL character"), ("\udc80", "lone UTF-16 surrogate")):
        where, problem = v.json_problem({"features": [*names[:7], bad, *names]}, max_depth=8)
        assert where == ".features[7]"
        assert what in problem
    # mixed lists walk item by item
    assert v.json_problem({"x": [1, "a\x00"]}, max_depth=8)[0] == ".x[1]"
    assert v.json_problem({"x": ["ab"] * 30}, max_depth=8, max_chars=60) == (
        "",
        "more than 60 characters of text",
    )
    assert v.json_problem({"x": ["ab"] * 30}, max_depth=8, max_chars=61) is None  # and the key


def test_tags_are_bounded():
    assert v.check_tags({f"k{i}": "v" for i in range(v.MAX_TAGS)})
    for tags, match in [
        ({f"k{i}": "v" for i in range(v.MAX_TAGS + 1)}, "at most 100"),
        ({"k" * (v.MAX_TAG_KEY_LENGTH + 1): "v"}, "tags key must have 1 to 250"),
        ({"": "v"}, "tags key must have"),
        ({"k": "v" * (v.MAX_TAG_VALUE_LENGTH + 1)}, "tags.k must have"),
        ({"k": 5}, "must be a string"),
        ({"k": NUL}, "NUL"),
    ]:
        with pytest.raises(ValidationError, match=match):
            v.check_tags(tags)


CRAFTED = [
    "%%%",  # not base64
    "a",  # bad padding
    "x" * (v.MAX_CURSOR_LENGTH + 1),
    v.encode_cursor({"offset": 1})[:-2] + "==",
    "bm90IGpzb24",  # 'not json'
    "WzFd",  # [1]
    v.encode_cursor({}),
    v.encode_cursor({"offset": "1"}),
    v.encode_cursor({"offset": -1}),
    v.encode_cursor({"offset": 2**64}),
    v.encode_cursor({"offset": 1, "extra": 1}),
    v.encode_cursor({"k": 1, "id": 2}),
    v.encode_cursor({"k": NUL, "id": "x"}),
]


@pytest.mark.parametrize("cursor", CRAFTED)
def test_crafted_cursors_are_validation_errors(cursor):
    specs = [{"offset": int}, {"k": str, "id": str}]
    for spec in specs:
        with pytest.raises(ValidationError, match="invalid cursor"):
            v.decode_cursor(cursor, spec)


def test_cursors_round_trip():
    fields = {"k": "2026-01-01T00:00:00+00:00", "id": str(uuid.uuid4())}
    assert v.decode_cursor(v.encode_cursor(fields), {"k": str, "id": str}) == fields


# --- the services (the CLI and Python callers) on both databases -----------------------


def test_registry_refuses_bad_input_and_stores_nothing(db_platform):
    registry = db_platform.registry
    registry.create_model(name="good", actor=ADMIN)
    bad_models = [
        ({"tags": {"k": SURROGATE}}, "surrogate"),
        ({"tags": {NUL: "v"}}, "NUL"),
        ({"description": NUL}, "NUL"),
        ({"description": "d" * (v.MAX_DESCRIPTION_LENGTH + 1)}, "description must have"),
        ({"tags": {f"k{i}": "v" for i in range(v.MAX_TAGS + 1)}}, "at most 100"),
    ]
    for fields, match in bad_models:
        with pytest.raises(ValidationError, match=match):
            registry.create_model(name="bad", actor=ADMIN, **fields)
        with pytest.raises(ValidationError, match=match):
            registry.update_model("good", **fields)
    bad_versions = [
        ({"params": _nested(v.MAX_JSON_DEPTH + 1)}, "deeper than 32"),
        ({"params": {"lr": SURROGATE}}, "surrogate"),
        ({"signature": {"inputs": [{"name": NUL}]}}, "NUL"),
        ({"metrics": {NUL: 1.0}}, "NUL"),
        ({"metrics": {"acc": float("inf")}}, "finite"),
        ({"requirements": ["x"] * (v.MAX_REQUIREMENTS + 1)}, "at most 1000"),
        ({"datasets": [{"uri": "d"}] * (v.MAX_DATASETS + 1)}, "at most 100"),
        ({"framework": NUL}, "NUL"),
        ({"files": {NUL: b"x"}}, "artifact path"),
    ]
    for fields, match in bad_versions:
        files = fields.pop("files", {"model.bin": b"x"})
        with pytest.raises(ValidationError, match=match):
            registry.create_version("good", files=files, actor=ADMIN, **fields)
    assert [m["name"] for m in registry.list_models()] == ["good"]
    assert registry.get_model("good")["tags"] == {} and registry.get_model("good")["versions"] == []
    with pytest.raises(ValidationError, match="offset"):
        registry.list_models(offset=2**64)


def test_experiments_refuse_bad_input(db_platform, trainer):
    service = db_platform.experiments
    for fields, match in [
        ({"description": NUL}, "NUL"),
        ({"hyperparameters": {"n_estimators": 5, "x": {"y": SURROGATE}}}, "surrogate"),
        ({"hyperparameters": _nested(v.MAX_JSON_DEPTH + 1)}, "deeper than 32"),
        ({"dataset": {"uri": "d.csv", "target": "y", "extra": NUL}}, "NUL"),
    ]:
        with pytest.raises(ValidationError, match=match):
            service.create(name="bad", trainer=trainer, actor=ADMIN, **fields)
    assert service.list() == []
    service.create(name="exp", trainer=trainer, actor=ADMIN)
    for points, match in [
        ([{"name": NUL, "value": 1.0}], r"points\[0\]\.name contains a NUL"),
        ([{"name": "ok", "value": 1.0}, {"name": SURROGATE, "value": 1.0}], r"points\[1\]"),
        ([{"name": f"m{i}", "value": 1.0} for i in range(1001)], "at most 1,000"),
        ([{"name": "m", "value": 1.0, "step": 2**64}], "step"),
        ([{"name": "m", "value": 1.0, "kind": {"a": 1}}], "kind"),  # unhashable: was a 500
        ([{"name": "m", "value": 1.0, "kind": ["train"]}], "kind"),
    ]:
        with pytest.raises(ValidationError, match=match):
            service.log_metrics("exp", points)
    assert service.metrics("exp")["count"] == 0
    for kwargs in ({"after_step": 2**64}, {"limit": 2**64}, {"name": NUL}, {"after_step": -1}):
        with pytest.raises(ValidationError):
            service.metrics("exp", **kwargs)
    with pytest.raises(ValidationError, match="offset"):
        service.list(offset=2**63)


def test_naive_recorded_at_is_utc(db_platform, trainer):
    service = db_platform.experiments
    service.create(name="exp", trainer=trainer, actor=ADMIN)
    service.log_metrics("exp", [{"name": "m", "value": 1.0, "recorded_at": "2026-01-01T12:00:00"}])
    times = service.metrics("exp")["metrics"]["m"]["times"]
    assert datetime.fromisoformat(times[0]) == datetime(2026, 1, 1, 12, tzinfo=timezone.utc)


def test_the_database_guard_refuses_what_a_service_did_not_check(db_platform):
    # create_user checks the name but not the e-mail, token names go straight through,
    # and lookups by any text reach a WHERE: the guard refuses each before the driver
    # (PostgreSQL would fail on NUL, SQLite would store a poisoned row).
    security = db_platform.security
    with pytest.raises(ValidationError, match="NUL"):
        security.create_user(name="eve", role="viewer", email=NUL)
    assert [u["name"] for u in security.list_users()] == []
    security.create_user(name="bob", role="viewer")
    with pytest.raises(ValidationError, match=r"surrogate|NUL"):
        security.create_token(user="bob", name=SURROGATE)
    with pytest.raises(ValidationError, match="NUL"):
        db_platform.registry.get_model(NUL)
    with pytest.raises(ValidationError, match="NUL"):
        db_platform.experiments.get(NUL)
    # the audit log keeps a refused request's entry: its text is scrubbed, not refused
    db_platform.audit.record(actor=NUL, action="y", outcome="failure", details={"p": SURROGATE})
    entry = db_platform.audit.query()[0]
    assert entry["actor"] == "a\ufffdb" and entry["details"] == {"p": "a\ufffdb"}


def test_audit_since_naive_is_utc(db_platform):
    db_platform.audit.record(actor="x", action="y", outcome="success")
    naive = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=5)
    assert len(db_platform.audit.query(since=naive)) == 1
    assert db_platform.audit.query(since=naive + timedelta(hours=1)) == []
    with pytest.raises(ValidationError, match="out of range"):
        db_platform.audit.query(since=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=3))))


def test_rows_stored_before_the_checks_read_back(platform):
    """A SQLite row written before the checks (a lone surrogate escaped in JSON, hundreds
    of levels deep) answers every read instead of failing it."""
    platform.registry.create_model(name="old", actor=ADMIN)
    database = platform.settings.database.url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as con:
        deep = json.dumps(_nested(300))
        con.execute(
            "UPDATE registered_models SET tags = ?, description = 'kept'",
            ('{"k": "\\ud800", "pair": "\\ud83d\\ude00", "deep": ' + deep + "}",),
        )
    model = platform.registry.get_model("old")
    assert model["tags"]["k"] == "\ufffd" and model["tags"]["pair"] == "😀"
    assert "not shown" in json.dumps(model["tags"]["deep"])
    assert [m["name"] for m in platform.registry.list_models()] == ["old"]


def test_the_cli_refuses_undecodable_arguments_in_one_line(run_cli, tmp_path):
    # bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape)
    result = run_cli("models", "create", "m1", "--description", "a\udcffb", cwd=tmp_path)
    assert result.exit_code != 0
    assert "lone UTF-16 surrogate" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    listed = run_cli("models", "list", "--json", cwd=tmp_path)
    assert listed.exit_code == 0 and "m1" not in listed.stdout


def test_purge_horizon_is_bounded(platform):
    # a cutoff before year 1 was an OverflowError (a traceback on the CLI)
    with pytest.raises(ValidationError, match="older_than_days must be an integer"):
        platform.registry.purge(actor=ADMIN, older_than_days=10**14, dry_run=True)
    assert platform.registry.purge(actor=ADMIN, older_than_days=36_500, dry_run=True) is not None


def test_token_lifetime_is_bounded(platform):
    platform.security.create_user(name="bob", role="viewer")
    for bad in (10**14, 0, 3651):  # a huge one was an OverflowError (a CLI traceback)
        with pytest.raises(ValidationError, match="ttl_days must be an integer from 1 to 3650"):
            platform.security.create_token(user="bob", ttl_days=bad)
    assert platform.security.create_token(user="bob", ttl_days=3650)["token"]
