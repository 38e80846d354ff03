"""mlrig.serving.auth.TokenCache: token checks without a database query per request,
revocation and expiry honoured, refusals cached briefly, bounded, keyed by hash."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from fastapi import Request
from sqlalchemy import event, update

from mlrig.api.security import Predictor, Writer
from mlrig.db.models.auth import ApiToken
from mlrig.errors import AuthenticationError
from mlrig.serving.auth import TokenCache


class FakeClock:
    """A monotonic clock the test moves by hand (the TTL without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def queries(platform):
    """A list that collects every SQL statement the platform's engine runs."""
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(platform.db.engine, "before_cursor_execute", count)
    yield seen
    event.remove(platform.db.engine, "before_cursor_execute", count)


@pytest.fixture
def token(platform):
    platform.security.create_user(name="alice", role="viewer")
    return platform.security.create_token(user="alice")


def test_no_database_query_within_the_ttl(platform, token, queries):
    clock = FakeClock()
    cache = TokenCache(platform.security, ttl_seconds=5, clock=clock)
    first = cache.authenticate(token["token"])
    assert first.name == "alice" and first.role == "viewer"
    assert queries, "the first check reads the database"
    queries.clear()
    for _ in range(200):
        clock.now += 0.02  # 4 s in all: still within the TTL
        assert cache.authenticate(token["token"]) == first
    assert queries == []
    assert cache.misses == 1
    assert cache.peek(token["token"]) == first


def test_revocation_is_honoured_within_the_ttl(platform, token, queries):
    clock = FakeClock()
    cache = TokenCache(platform.security, ttl_seconds=5, clock=clock)
    cache.authenticate(token["token"])
    platform.security.revoke_token(token["id"])
    clock.now += 4.9
    cache.authenticate(token["token"])  # trusted until the TTL runs out: the documented lag
    clock.now += 0.2
    with pytest.raises(AuthenticationError, match="revoked"):
        cache.authenticate(token["token"])
    # the refusal is remembered (at most a second), then checked again
    queries.clear()
    with pytest.raises(AuthenticationError, match="revoked"):
        cache.authenticate(token["token"])
    assert queries == []
    clock.now += 1.01
    with pytest.raises(AuthenticationError, match="revoked"):
        cache.authenticate(token["token"])
    assert queries, "a refusal older than a second is checked again"


def test_an_expired_token_is_refused_even_when_cached(platform, token):
    cache = TokenCache(platform.security, ttl_seconds=3600)
    # expires in a moment: the cached entry must not outlive it
    soon = datetime.now(timezone.utc) + timedelta(milliseconds=300)
    with platform.db.session() as session:
        session.execute(
            update(ApiToken).where(ApiToken.token_prefix == token["prefix"]).values(expires_at=soon)
        )
    assert cache.authenticate(token["token"]).name == "alice"
    done = threading.Event()
    done.wait(0.4)  # past the expiry (a real wall clock: expiry is a wall-clock instant)
    with pytest.raises(AuthenticationError, match="expired"):
        cache.authenticate(token["token"])


def test_an_already_expired_token_is_refused(platform, token):
    with platform.db.session() as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.token_prefix == token["prefix"])
            .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
        )
    cache = TokenCache(platform.security, ttl_seconds=60)
    with pytest.raises(AuthenticationError, match="expired"):
        cache.authenticate(token["token"])


def test_unknown_and_malformed_tokens(platform, token, queries):
    clock = FakeClock()
    cache = TokenCache(platform.security, ttl_seconds=5, clock=clock)
    with pytest.raises(AuthenticationError, match="needs a token"):
        cache.authenticate(None)
    with pytest.raises(AuthenticationError, match="malformed"):
        cache.authenticate("garbage")
    assert queries == []  # refused before any database check
    forged = token["token"][:-4] + "AAAA"  # the right prefix, the wrong secret
    with pytest.raises(AuthenticationError, match="unknown token"):
        cache.authenticate(forged)
    queries.clear()
    for _ in range(50):
        with pytest.raises(AuthenticationError, match="unknown token"):
            cache.authenticate(forged)
    assert queries == []  # a flood of one bad token: one database check per second
    assert cache.authenticate(token["token"]).name == "alice"  # the good one still works


def test_ttl_zero_checks_every_time(platform, token, queries):
    cache = TokenCache(platform.security, ttl_seconds=0)
    cache.authenticate(token["token"])
    cache.authenticate(token["token"])
    assert cache.misses == 2
    assert len(cache) == 0


def test_bounded_and_keyed_by_hash(platform, token):
    cache = TokenCache(platform.security, ttl_seconds=60, max_size=3)
    platform.security.create_user(name="bob", role="viewer")
    tokens = [platform.security.create_token(user="bob", name=f"t{i}")["token"] for i in range(5)]
    for plaintext in tokens:
        cache.authenticate(plaintext)
    assert len(cache._valid.entries) == 3  # the least recently used went
    assert cache.peek(tokens[0]) is None and cache.peek(tokens[-1]) is not None
    for key, (_, principal) in cache._valid.entries.items():
        assert len(key) == 32  # a sha256 digest, never the token
        assert all(t.encode() != key for t in tokens)
        assert principal.name == "bob"
    # garbage fills the refused side only: the valid tokens stay
    for i in range(10):
        with pytest.raises(AuthenticationError):
            cache.authenticate(f"mlr_{i:08d}_nothing")
    assert len(cache._valid.entries) == 3
    assert len(cache._refused.entries) == 3


def test_invalidate(platform, token, queries):
    cache = TokenCache(platform.security, ttl_seconds=60)
    cache.authenticate(token["token"])
    cache.invalidate(token["token"])
    assert cache.peek(token["token"]) is None
    cache.authenticate(token["token"])
    cache.invalidate()
    assert len(cache) == 0


def test_thread_safe_under_concurrent_use(platform, token):
    cache = TokenCache(platform.security, ttl_seconds=60, max_size=50)
    platform.security.create_user(name="bob", role="viewer")
    plaintexts = [
        platform.security.create_token(user="bob", name=f"t{i}")["token"] for i in range(8)
    ]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(300):
                principal = cache.authenticate(plaintexts[(n + i) % len(plaintexts)])
                assert principal.name == "bob"
                if i % 50 == 0:
                    cache.invalidate(plaintexts[n])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert cache.misses < 8 * 300  # the cache answered most of them


def test_scopes_and_expiry_survive_the_cache(platform):
    platform.security.create_user(name="svc", role="viewer")
    made = platform.security.create_token(user="svc", scopes=["predict:churn"], ttl_days=1)
    cache = TokenCache(platform.security, ttl_seconds=60)
    principal = cache.authenticate(made["token"])
    assert principal.scopes == ("predict:churn",)
    assert principal.expires_at is not None
    assert principal.may_predict("some-id", "churn")
    assert not principal.may_predict("some-id", "fraud")


def test_negative_ttl_is_at_most_the_ttl(platform):
    assert TokenCache(platform.security, ttl_seconds=0.2).negative_ttl_seconds == 0.2
    assert TokenCache(platform.security, ttl_seconds=30).negative_ttl_seconds == 1.0
    with pytest.raises(ValueError):
        TokenCache(platform.security, ttl_seconds=-1)


def test_a_burst_with_an_unknown_token_makes_one_database_check(platform, token):
    """Requests arriving together with a token the cache does not know (a server that
    just started) wait for the first one's check instead of each asking the database."""
    calls = []
    gate = threading.Event()
    real = platform.security.authenticate

    class SlowSecurity:
        def authenticate(self, plaintext):
            calls.append(plaintext)
            gate.wait(timeout=30)  # held until every request is waiting
            return real(plaintext)

    cache = TokenCache(SlowSecurity(), ttl_seconds=60)
    answers: list[object] = []
    threads = [
        threading.Thread(target=lambda: answers.append(cache.authenticate(token["token"])))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    while len(cache._pending) == 0:
        threading.Event().wait(0.01)
    threading.Event().wait(0.2)  # let the others reach the wait
    gate.set()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == 8 and {a.name for a in answers} == {"alice"}
    assert len(calls) == 1
    assert cache._pending == {}


# --- the REST API's guard on prediction routes ---------------------------------------------


def test_predict_body_class_is_bounded_by_the_serving_limit(tmp_path):
    """A route in the "predict" body class is bounded by [serving] max_body_bytes (the
    data plane's limit), not by [api] max_body_bytes."""
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    from mlrig.api import create_app
    from mlrig.api.middleware import body_class
    from mlrig.testing.fixtures import make_platform

    platform = make_platform(
        tmp_path / "home", api={"max_body_bytes": 2048}, serving={"max_body_bytes": 8192}
    )
    try:
        router = APIRouter(prefix="/api/ml/body-test")

        @router.post("/predict", dependencies=[body_class("predict")])
        async def predict(request: Request, principal: Predictor) -> dict[str, int]:
            return {"bytes": len(await request.body())}

        @router.post("/plain")
        async def plain(request: Request, principal: Writer) -> dict[str, int]:
            return {"bytes": len(await request.body())}

        app = create_app(platform)
        app.include_router(router)
        client = TestClient(app, raise_server_exceptions=False)
        platform.security.create_user(name="dev", role="developer")
        headers = {"Authorization": f"Bearer {platform.security.create_token(user='dev')['token']}"}
        body = b"x" * 5000  # over [api]'s limit, under [serving]'s
        assert client.post("/api/ml/body-test/predict", content=body, headers=headers).json() == {
            "bytes": 5000
        }
        assert (
            client.post("/api/ml/body-test/plain", content=body, headers=headers).status_code == 413
        )
        too_big = client.post("/api/ml/body-test/predict", content=b"x" * 9000, headers=headers)
        assert too_big.status_code == 413
        error = too_big.json()["error"]
        assert "raise [serving] max_body_bytes" in error["message"]
        assert error["details"] == {"limit_bytes": 8192, "setting": "serving.max_body_bytes"}

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b"x" * 1000

        streamed = client.post("/api/ml/body-test/predict", content=chunks(), headers=headers)
        assert streamed.status_code == 413
    finally:
        platform.close()
