"""Bad input over REST, on SQLite and PostgreSQL: every class of bad value is a 422 in the
one error shape, nothing bad is stored, and whatever was accepted reads back.

Lone surrogates cannot be UTF-8 encoded, so the bodies here are raw JSON text carrying
``\\ud800`` escapes, as a client that sends them would.
"""

import itertools
import json
import re
import uuid

import pytest
from _api import list_routes
from fastapi.testclient import TestClient

from mlrig import validation as v
from mlrig.api import create_app
from mlrig.security import Principal

ADMIN = Principal(name="local", role="admin")


@pytest.fixture
def client(db_platform, trainer):
    """An admin client over a platform on each database, with model ``m`` (version 1),
    experiment ``e`` and user ``root``."""
    db_platform.security.create_user(name="root", role="admin")
    token = db_platform.security.create_token(user="root")["token"]
    db_platform.registry.create_version(
        "m", files={"model.bin": b"weights"}, actor=ADMIN, create_model=True
    )
    db_platform.experiments.create(name="e", trainer=trainer, actor=ADMIN)
    with TestClient(
        create_app(db_platform),
        raise_server_exceptions=False,
        headers={"Authorization": f"Bearer {token}"},
    ) as api:
        yield api


def _raw(api, method, url, text):
    return api.request(
        method, url, content=text.encode(), headers={"Content-Type": "application/json"}
    )


def _refused(response, status=422):
    assert response.status_code == status, (response.request.url, response.text)
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == ("validation_error" if status == 422 else error["code"])
    return error["message"]


def _reads_back(api):
    for url in [
        *list_routes(api.app),
        "/api/ml/models/m",
        "/api/ml/experiments/e",
        "/api/ml/models/m/versions",
    ]:
        response = api.get(url)
        assert response.status_code == 200, (url, response.text)


# --- 1. NUL characters and lone surrogates --------------------------------------------------

UNSTORABLE_BODIES = [
    ("POST", "/api/ml/models", r'{"name": "m2", "tags": {"k": "\ud800"}}'),
    ("POST", "/api/ml/models", r'{"name": "m2", "tags": {"\u0000": "v"}}'),
    ("POST", "/api/ml/models", r'{"name": "m2", "description": "a\u0000"}'),
    ("PUT", "/api/ml/models/m", r'{"tags": {"k": "\udc00"}}'),
    ("PUT", "/api/ml/models/m/versions/1", r'{"description": "\ud800"}'),
    (
        "POST",
        "/api/ml/experiments",
        r'{"name": "e2", "trainer": "sklearn", "hyperparameters": {"x": [{"y": "\ud800"}]}}',
    ),
    (
        "POST",
        "/api/ml/experiments",
        r'{"name": "e2", "trainer": "sklearn", "description": "\u0000"}',
    ),
    ("POST", "/api/ml/experiments/e/metrics", r'{"points": [{"name": "lo\u0000ss", "value": 1}]}'),
    ("POST", "/api/ml/experiments/e/metrics", r'{"points": [{"name": "lo\ud800ss", "value": 1}]}'),
    ("POST", "/api/ml/users", r'{"name": "u2", "email": "\u0000"}'),
    ("POST", "/api/ml/tokens", r'{"name": "\ud800"}'),
    ("PUT", "/api/ml/models/m/aliases/champion", r'{"version": "\u0000"}'),
    ("POST", "/api/ml/models/m/versions/1/stage", r'{"stage": "staging", "comment": "\ud800"}'),
]


def test_unstorable_text_in_bodies_is_refused_and_nothing_breaks(client):
    for method, url, text in UNSTORABLE_BODIES:
        message = _refused(_raw(client, method, url, text))
        assert re.search("NUL|surrogate|not valid JSON", message), (url, text, message)
    _reads_back(client)
    assert [m["name"] for m in client.get("/api/ml/models").json()["items"]] == ["m"]
    assert [e["name"] for e in client.get("/api/ml/experiments").json()["items"]] == ["e"]
    assert client.get("/api/ml/models/m").json()["tags"] == {}
    assert client.get("/api/ml/experiments/e/metrics").json()["count"] == 0


UNSTORABLE_PARAMS = [
    ("GET", "/api/ml/models?q=%00"),
    ("GET", "/api/ml/models/%00"),
    ("GET", "/api/ml/model-versions?tag=k:a%00"),
    ("GET", "/api/ml/model-versions?name=%00"),
    ("GET", "/api/ml/experiments/e/metrics?name=a%00"),
    ("GET", "/api/ml/audit?actor=%00"),
    ("GET", "/api/ml/approvals?model=%00"),
    ("GET", "/api/ml/models/m/versions/1/artifacts/a%00b"),
    ("DELETE", "/api/ml/tokens/%00"),
    ("GET", "/api/ml/models?" + "&".join(["tag=a:b"] * (v.MAX_PARAM_REPEATS + 1))),
    ("GET", "/api/ml/models?q=" + "x" * (v.MAX_PARAM_LENGTH + 1)),
]


def test_unstorable_query_and_path_parameters_are_refused(client):
    for method, url in UNSTORABLE_PARAMS:
        _refused(client.request(method, url))
    _reads_back(client)


def test_unstorable_multipart_fields_are_refused(client):
    url = "/api/ml/models/m/versions"
    files = {"files": ("model.bin", b"w")}
    for metadata in (r'{"params": {"lr": "\ud800"}}', r'{"tags": {"k": "\u0000"}}'):
        message = _refused(client.post(url, files=files, data={"metadata": metadata}))
        assert "surrogate" in message or "NUL" in message
    deep = '{"params": ' + "[" * 100_000 + "]" * 100_000 + "}"
    _refused(client.post(url, files=files, data={"metadata": deep}))
    # by hand: httpx would percent-encode the NUL of a file name
    body = (
        b'--B\r\nContent-Disposition: form-data; name="files"; filename="a\x00b"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\nw\r\n--B--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=B"}
    message = _refused(client.post(url, content=body, headers=headers))
    assert "NUL" in message
    assert [x["version"] for x in client.get(url).json()["items"]] == ["1"]


# --- 2. integers beyond 64 bits, and negative where nonsense ----------------------------

HUGE = str(2**64)


def test_huge_and_negative_integers_are_refused(client):
    for url in [
        f"/api/ml/models?offset={HUGE}",
        "/api/ml/models?offset=-1",
        f"/api/ml/models?limit={HUGE}",
        f"/api/ml/experiments?offset={HUGE}",
        f"/api/ml/experiments/e/metrics?after_step={HUGE}",
        "/api/ml/experiments/e/metrics?after_step=-1",
        f"/api/ml/experiments/e/metrics?limit={HUGE}",
        f"/api/ml/experiments/e/logs?offset={HUGE}",
        f"/api/ml/experiments/e/logs?limit={HUGE}",
        f"/api/ml/audit?limit={HUGE}",
        f"/api/ml/model-versions?limit={HUGE}",
    ]:
        message = _refused(client.get(url))
        assert "less than or equal" in message or "greater than or equal" in message, url
    for body in [
        {"name": "e3", "trainer": "sklearn", "priority": 2**70},
        {"name": "e3", "trainer": "sklearn", "seed": 2**64},
        {"name": "e3", "trainer": "sklearn", "max_attempts": 2**64},
        {"name": "e3", "trainer": "sklearn", "resources": {"cpus": 2**64}},
        {"name": "e3", "trainer": "sklearn", "hyperparameters": {"n_estimators": 2**64}},
        {"name": "e3", "trainer": "sklearn", "early_stopping": {"monitor": "l", "patience": 2**64}},
    ]:
        _refused(_raw(client, "POST", "/api/ml/experiments", json.dumps(body)))
    _refused(_raw(client, "POST", "/api/ml/tokens", json.dumps({"ttl_days": 2**64})))
    points = f'{{"points": [{{"name": "m", "value": 1, "step": {HUGE}}}]}}'
    _refused(_raw(client, "POST", "/api/ml/experiments/e/metrics", points))
    _reads_back(client)


# --- 3. datetimes: naive is UTC, out of range is a 422 -------------------------------------


def test_naive_datetimes_are_utc_and_out_of_range_ones_are_refused(client):
    assert client.post("/api/ml/models", json={"name": "dt"}).status_code == 201  # audited
    for url in ["/api/ml/audit?since={}", "/api/ml/model-versions?created_after={}"]:
        naive = client.get(url.format("2020-01-01T00:00:00"))
        aware = client.get(url.format("2020-01-01T00:00:00%2B00:00"))
        assert naive.status_code == aware.status_code == 200
        assert len(naive.json()["items"]) == len(aware.json()["items"]) > 0
        assert client.get(url.format("2999-01-01")).json()["items"] == []
        for bad in ("0001-01-01T00:00:00%2B05:00", "9999-12-31T23:00:00-05:00", "9999-12-31"):
            assert "out of range" in _refused(client.get(url.format(bad)))
        _refused(client.get(url.format("not-a-date")))
    _refused(client.get("/api/ml/model-versions?created_before=0001-01-01T01:00:00%2B02:00"))
    points = '{"points": [{"name": "m", "value": 1, "recorded_at": "2026-01-01T12:00:00"}]}'
    assert _raw(client, "POST", "/api/ml/experiments/e/metrics", points).status_code == 200
    times = client.get("/api/ml/experiments/e/metrics").json()["metrics"]["m"]["times"]
    assert times[0].startswith("2026-01-01T12:00:00") and times[0].endswith("+00:00")
    bad = '{"points": [{"name": "m", "value": 1, "recorded_at": "0001-01-01T00:00:00+01:00"}]}'
    assert "out of range" in _refused(_raw(client, "POST", "/api/ml/experiments/e/metrics", bad))


# --- 4. pagination cursors ---------------------------------------------------------------

CRAFTED_CURSORS = [
    "%%%",
    "a",
    "x" * (v.MAX_CURSOR_LENGTH + 1),
    "bm90IGpzb24",  # not json
    "WzFd",  # [1]
    v.encode_cursor({}),
    v.encode_cursor({"offset": "1"}),
    v.encode_cursor({"offset": -1}),
    v.encode_cursor({"offset": 2**64}),
    v.encode_cursor({"k": 1, "id": 2}),
    v.encode_cursor({"k": "not a time", "id": "not a uuid"}),
    # a time out of range after UTC conversion (a fine name, so not for sort=name)
    TIME_CURSOR := v.encode_cursor({"k": "0001-01-01T00:00:00+05:00", "id": str(uuid.uuid4())}),
]
CURSOR_LISTS = [
    "/api/ml/model-versions",
    "/api/ml/model-versions?sort=name",
    "/api/ml/model-versions?sort=metrics.acc",
    "/api/ml/models/m/versions",
    "/api/ml/models",
    "/api/ml/experiments",
    "/api/ml/audit",
]


def test_crafted_cursors_are_refused_and_real_ones_page(client, db_platform):
    for url, cursor in itertools.product(CURSOR_LISTS, CRAFTED_CURSORS):
        if cursor == TIME_CURSOR and "sort=name" in url:
            continue
        sep = "&" if "?" in url else "?"
        response = client.get(f"{url}{sep}cursor={cursor}")
        assert response.status_code in (400, 422), (url, cursor, response.text)
        assert set(response.json()["error"]) == {"code", "message", "details"}
    for _ in range(2):
        db_platform.registry.create_version("m", files={"model.bin": b"w"}, actor=ADMIN)
    seen, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/ml/models/m/versions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [x["version"] for x in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == ["3", "2", "1"]


# --- 5. JSON depth -----------------------------------------------------------------------


def _nested(depth):
    value = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_free_form_json_is_bounded_in_depth_and_what_is_kept_reads_back(client):
    url = "/api/ml/models/m/versions"
    files = {"files": ("model.bin", b"w")}
    too_deep = json.dumps({"params": _nested(v.MAX_JSON_DEPTH + 1)})
    assert "deeper than 32" in _refused(client.post(url, files=files, data={"metadata": too_deep}))
    body = {"name": "e3", "trainer": "sklearn", "hyperparameters": _nested(v.MAX_JSON_DEPTH + 1)}
    assert "deeper than 32" in _refused(client.post("/api/ml/experiments", json=body))
    deepest = {"params": _nested(v.MAX_JSON_DEPTH), "signature": _nested(v.MAX_JSON_DEPTH)}
    created = client.post(url, files=files, data={"metadata": json.dumps(deepest)})
    assert created.status_code == 201, created.text
    version = client.get(f"{url}/{created.json()['version']}").json()
    assert version["params"] == deepest["params"] and version["signature"] == deepest["signature"]
    _reads_back(client)


# --- 6. bounded collections and sizes ------------------------------------------------------


def test_collections_and_sizes_are_bounded(client):
    def tags(n, key="k", value="v"):
        return {f"{key}{i}": value for i in range(n)}

    too_big = [
        ("POST", "/api/ml/models", {"name": "m2", "tags": tags(v.MAX_TAGS + 1)}),
        ("POST", "/api/ml/models", {"name": "m2", "tags": {"k" * 251: "v"}}),
        ("POST", "/api/ml/models", {"name": "m2", "tags": {"k": "v" * 5001}}),
        ("POST", "/api/ml/models", {"name": "m2", "description": "d" * 10_001}),
        ("POST", "/api/ml/models", {"name": "m" * 256}),
        ("PUT", "/api/ml/models/m", {"tags": tags(v.MAX_TAGS + 1)}),
        ("PUT", "/api/ml/models/m/versions/1", {"tags": tags(v.MAX_TAGS + 1)}),
        (
            "POST",
            "/api/ml/experiments",
            {"name": "e2", "trainer": "sklearn", "hyperparameters": {"a": "x" * 300_000}},
        ),
        (
            "POST",
            "/api/ml/experiments",
            {"name": "e2", "trainer": "sklearn", "hyperparameters": tags(1001)},
        ),
        (
            "POST",
            "/api/ml/experiments/e/metrics",
            {"points": [{"name": f"m{i}", "value": 1} for i in range(1001)]},
        ),
    ]
    for method, url, body in too_big:
        _refused(client.request(method, url, json=body))
    versions = "/api/ml/models/m/versions"
    for metadata in [
        {"requirements": ["x"] * (v.MAX_REQUIREMENTS + 1)},
        {"datasets": [{"uri": "d"}] * (v.MAX_DATASETS + 1)},
        {"params": {"blob": "x" * (v.MAX_JSON_BYTES + 1)}},
        {"metrics": {f"m{i}": 1.0 for i in range(1001)}},
    ]:
        response = client.post(
            versions, files={"files": ("f", b"w")}, data={"metadata": json.dumps(metadata)}
        )
        _refused(response)
    exactly = client.post("/api/ml/models", json={"name": "m2", "tags": tags(v.MAX_TAGS)})
    assert exactly.status_code == 201, exactly.text
    assert len(client.get("/api/ml/models/m2").json()["tags"]) == v.MAX_TAGS
    _reads_back(client)


def test_the_schema_states_the_bounds(api_client):
    schema = api_client.get("/openapi.json").json()
    models = schema["components"]["schemas"]
    create = models["ModelCreate"]["properties"]
    assert create["name"]["pattern"] and create["name"]["maxLength"] == 255
    assert create["tags"]["maxProperties"] == v.MAX_TAGS
    assert create["tags"]["additionalProperties"]["maxLength"] == v.MAX_TAG_VALUE_LENGTH
    hyper = models["ExperimentCreate"]["properties"]["hyperparameters"]
    assert "32 levels" in hyper["description"]
    params = {p["name"]: p for p in schema["paths"]["/api/ml/model-versions"]["get"]["parameters"]}
    assert "UTC" in params["created_after"]["description"]
    assert _max_length(params["cursor"]["schema"]) <= v.MAX_CURSOR_LENGTH
    listing = {p["name"]: p for p in schema["paths"]["/api/ml/models"]["get"]["parameters"]}
    assert listing["offset"]["schema"]["maximum"] == v.INT64_MAX
    assert listing["offset"]["schema"]["minimum"] == 0


def _max_length(schema):
    return min(s.get("maxLength", 10**9) for s in schema.get("anyOf", [schema]))


def test_every_body_model_and_every_route_goes_through_the_checks(platform):
    """The class of bug stays impossible: every JSON body model of every route is an
    InputModel (which walks the raw body), and the app checks every route's parameters."""
    import typing

    from fastapi.routing import APIRoute
    from pydantic import BaseModel

    from mlrig.api.types import InputModel, check_request_params

    app = create_app(platform)
    assert check_request_params in [d.dependency for d in app.router.dependencies]
    from mlrig.api.routers import ROUTERS

    models = set()
    for route in [r for router in ROUTERS for r in router.routes]:
        if not isinstance(route, APIRoute):
            continue
        for param in route.dependant.body_params:
            annotation = param.field_info.annotation
            for kind in typing.get_args(annotation) or (annotation,):
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    models.add(kind)
    assert len(models) >= 8  # the walk found the body models
    assert [m.__name__ for m in models if not issubclass(m, InputModel)] == []


def test_upload_limits_hold_as_documented(platform, api_client, admin_headers):
    platform.registry.create_model(name="m", actor=ADMIN)
    url = "/api/ml/models/m/versions"
    big = json.dumps({"description": "x" * (1024 * 1024 + 1)})
    response = api_client.post(
        url, files={"files": ("a", b"w")}, data={"metadata": big}, headers=admin_headers
    )
    assert "maximum size" in _refused(response, 400)
    many = [("files", (f"f{i}", b"w")) for i in range(1001)]
    response = api_client.post(url, files=many, headers=admin_headers)
    assert "Too many files" in _refused(response, 400)


def test_input_models_built_in_python_take_nested_models():
    from pydantic import ValidationError as PydanticError

    from mlrig.api.routers.experiments import ExperimentCreate, Resources
    from mlrig.api.routers.models import ModelCreate

    body = ExperimentCreate(name="x", trainer="sklearn", resources=Resources(cpus=2))
    assert body.resources.cpus == 2
    with pytest.raises(PydanticError, match=r"tags\.a: contains a NUL"):
        ModelCreate(name="x", tags={"a": "b\x00"})


def test_plugin_routes_get_the_parameter_check(platform, register_plugin, admin_headers):
    from fastapi import APIRouter

    from mlrig import hookimpl

    router = APIRouter()

    @router.get("/api/ml/plugin-echo/{word}")
    def echo(word: str, q: str | None = None) -> dict[str, str | None]:
        return {"word": word, "q": q}

    class Plugin:
        @hookimpl
        def mlrig_register_routes(self, app, platform):
            app.include_router(router)

    register_plugin(Plugin())
    with TestClient(create_app(platform), raise_server_exceptions=False) as api:
        base = "/api/ml/plugin-echo"
        assert api.get(f"{base}/ok", headers=admin_headers).json() == {"word": "ok", "q": None}
        _refused(api.get(f"{base}/a%00b", headers=admin_headers))
        _refused(api.get(f"{base}/ok?q=%00", headers=admin_headers))


def test_the_schema_says_no_nul_on_every_body_string(api_client):
    """A request valid by the schema is not refused: every string of a body model states
    the NUL rule (or a stricter pattern, an enum or a format)."""
    schema = api_client.get("/openapi.json").json()
    bodies = {
        ref.rsplit("/", 1)[-1]
        for item in schema["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        for content in operation.get("requestBody", {}).get("content", {}).values()
        for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(content))
    }
    assert {"ModelCreate", "ExperimentCreate", "TokenCreate"} <= bodies
    loose = []

    def visit(node, where):
        if isinstance(node, dict):
            if node.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(
                node
            ):
                loose.append(where)
            for key, child in node.items():
                visit(child, f"{where}.{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                visit(child, f"{where}[{index}]")

    components = schema["components"]["schemas"]
    for name in bodies | {"Resources", "EarlyStoppingRule", "DatasetRef"}:
        if name in components:
            visit(components[name], name)
    assert loose == []
