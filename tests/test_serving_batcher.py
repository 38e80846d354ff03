"""The adaptive micro-batcher: each request gets its own rows back, lone requests don't wait,
a full queue answers 429 at once, a bad request fails alone, close() drains."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import numpy as np
import pytest

from mlrig.errors import MlrigError, ValidationError
from mlrig.serving.batcher import Closing, MicroBatcher, Overloaded

#: safety bound on every wait in these tests (they finish in milliseconds when all is well)
TIMEOUT = 30


def echo(x: np.ndarray):
    """Predictions are the first column doubled; probabilities the first two columns."""
    return (x[:, 0] * 2).tolist(), x[:, :2].tolist()


def run_async(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


class Recorder:
    """A model that records the size of every batch and can be held (to fill the queue)."""

    def __init__(self, *, sleep: float = 0.0, hold: bool = False) -> None:
        self.sizes: list[int] = []
        self.sleep = sleep
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.started = threading.Event()

    def __call__(self, x: np.ndarray):
        self.started.set()
        assert self.gate.wait(TIMEOUT)
        if self.sleep:
            time.sleep(self.sleep)
        self.sizes.append(len(x))
        if (x < 0).any():
            msg = "negative values are refused by this model"
            raise ValidationError(msg)
        return echo(x)


def request(i: int, rows: int) -> np.ndarray:
    """``rows`` rows whose values identify request ``i`` and the row."""
    return np.array([[i * 100 + r, i * 100 + r + 0.5, 7.0] for r in range(rows)], dtype=np.float64)


@pytest.mark.parametrize("mode", ["inline", "thread", "auto"])
def test_each_request_gets_its_own_rows_under_concurrency(mode):
    model = Recorder(sleep=0.001 if mode == "thread" else 0.0)
    rng = random.Random(7)
    sizes = [rng.randrange(1, 6) for _ in range(200)]

    async def main():
        batcher = MicroBatcher(model, max_batch_size=8, max_latency_ms=1, max_queue=1000, mode=mode)

        async def one(i, rows):
            await asyncio.sleep(rng.random() * 0.002)
            return await batcher.submit(request(i, rows))

        results = await asyncio.gather(*(one(i, n) for i, n in enumerate(sizes)))
        await batcher.close()
        return batcher, results

    batcher, results = run_async(main())
    for i, ((predictions, probabilities), rows) in enumerate(zip(results, sizes, strict=True)):
        x = request(i, rows)
        assert list(predictions) == (x[:, 0] * 2).tolist()
        assert [list(p) for p in probabilities] == x[:, :2].tolist()
    assert sum(model.sizes) == sum(sizes)
    # batches never exceed max_batch_size (no request here is larger than it)
    assert max(model.sizes) <= 8
    assert batcher.requests == len(sizes) and batcher.in_flight == 0
    if mode == "thread":
        assert batcher.batches < len(sizes), "concurrent requests were never batched"


def test_requests_arriving_while_a_batch_runs_form_the_next_batch():
    model = Recorder(hold=True)

    async def main():
        batcher = MicroBatcher(
            model, max_batch_size=64, max_latency_ms=0, max_queue=100, mode="thread"
        )
        first = asyncio.ensure_future(batcher.submit(request(0, 1)))
        await asyncio.to_thread(model.started.wait, TIMEOUT)
        later = [asyncio.ensure_future(batcher.submit(request(i, 1))) for i in range(1, 11)]
        await asyncio.sleep(0)
        assert batcher.queue_depth == 10 and batcher.in_flight == 11
        model.gate.set()
        await asyncio.gather(first, *later)
        await batcher.close()

    run_async(main())
    assert model.sizes == [1, 10]


def test_a_request_larger_than_max_batch_size_runs_alone_unsplit():
    model = Recorder()

    async def main():
        batcher = MicroBatcher(model, max_batch_size=4, max_latency_ms=0, max_queue=10)
        predictions, _ = await batcher.submit(request(1, 9))
        await batcher.close()
        return predictions

    assert len(run_async(main())) == 9
    assert model.sizes == [9]


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_a_lone_request_does_not_wait_for_the_latency_timer(mode):
    """With max_latency_ms far above the bound, any timer wait would show."""
    model = Recorder()

    async def main():
        batcher = MicroBatcher(
            model, max_batch_size=64, max_latency_ms=2000, max_queue=10, mode=mode
        )
        latencies = []
        for i in range(5):
            await asyncio.sleep(0.05)  # a slow trickle: lone requests
            started = time.perf_counter()
            await batcher.submit(request(i, 1))
            latencies.append(time.perf_counter() - started)
        await batcher.close()
        return latencies

    latencies = run_async(main())
    assert max(latencies) < 1.0, latencies  # a bound (the timer would add 2 s), not a benchmark
    assert model.sizes == [1] * 5


def test_waits_for_more_only_when_more_are_known_to_be_coming():
    batcher = MicroBatcher(echo, max_batch_size=8, max_latency_ms=5, max_queue=10)
    assert not batcher._worth_waiting()  # nothing known yet
    batcher._run_time, batcher._gap_avg = 0.002, 1.0  # 1 request/s
    assert not batcher._worth_waiting()
    batcher._run_time, batcher._gap_avg = 0.002, 0.0005  # arrivals faster than a batch run
    assert batcher._worth_waiting()
    batcher._pending_rows = 8  # the batch is full already
    assert not batcher._worth_waiting()
    no_wait = MicroBatcher(echo, max_batch_size=8, max_latency_ms=0, max_queue=10)
    no_wait._run_time, no_wait._gap_avg = 0.002, 0.0005
    assert not no_wait._worth_waiting()


def test_a_waiting_batch_starts_as_soon_as_it_is_full():
    model = Recorder()

    async def main():
        batcher = MicroBatcher(
            model, max_batch_size=4, max_latency_ms=10_000, max_queue=10, mode="inline"
        )
        batcher._run_time, batcher._gap_avg = 1.0, 0.001  # more are known to be coming
        started = time.perf_counter()
        await asyncio.gather(*(batcher.submit(request(i, 1)) for i in range(4)))
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    assert run_async(main()) < 5.0  # not the 10 s latency budget: the full batch went at once
    assert model.sizes == [4]


def test_overload_answers_429_at_once_with_retry_after():
    model = Recorder(hold=True)

    async def main():
        batcher = MicroBatcher(
            model, max_batch_size=2, max_latency_ms=0, max_queue=3, mode="thread"
        )
        running = asyncio.ensure_future(batcher.submit(request(0, 1)))
        await asyncio.to_thread(model.started.wait, TIMEOUT)
        waiting = [asyncio.ensure_future(batcher.submit(request(i, 1))) for i in range(1, 4)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(Overloaded) as info:
            await batcher.submit(request(9, 1))
        refused_in = time.perf_counter() - started
        assert batcher.queue_depth == 3
        model.gate.set()
        done = await asyncio.gather(running, *waiting)
        await batcher.close()
        return info.value, refused_in, done

    error, refused_in, done = run_async(main())
    assert isinstance(error, MlrigError)
    assert error.http_status == 429 and error.code == "overloaded"
    assert isinstance(error.retry_after, int) and error.retry_after >= 1
    assert error.details["retry_after"] == error.retry_after and "max_queue" in error.message
    assert refused_in < 1.0  # at once, not after the queue drained
    assert len(done) == 4  # the queued requests were all answered


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_a_failing_request_fails_alone(mode):
    model = Recorder(hold=mode == "thread")

    async def main():
        batcher = MicroBatcher(model, max_batch_size=16, max_latency_ms=0, max_queue=100, mode=mode)
        first = asyncio.ensure_future(batcher.submit(request(0, 1)))
        if mode == "thread":
            await asyncio.to_thread(model.started.wait, TIMEOUT)
        good = [asyncio.ensure_future(batcher.submit(request(i, 2))) for i in range(1, 5)]
        bad = asyncio.ensure_future(batcher.submit(-np.ones((1, 3))))
        more = [asyncio.ensure_future(batcher.submit(request(i, 1))) for i in range(5, 8)]
        model.gate.set()
        results = await asyncio.gather(first, *good, bad, *more, return_exceptions=True)
        await batcher.close()
        return results

    results = run_async(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], ValidationError)
    assert isinstance(results[5], ValidationError)
    assert [len(r[0]) for r in results if not isinstance(r, BaseException)] == [
        1,
        2,
        2,
        2,
        2,
        1,
        1,
        1,
    ]
    assert any(size > 1 for size in model.sizes), "the requests were never batched"


def test_a_model_answering_the_wrong_number_of_rows_is_an_error():
    async def main():
        batcher = MicroBatcher(
            lambda x: ([1], None), max_batch_size=8, max_latency_ms=0, max_queue=8
        )
        with pytest.raises(RuntimeError, match="1 predictions for a batch of 2 rows"):
            await batcher.submit(np.zeros((2, 3)))
        await batcher.close()

    run_async(main())


def test_on_batch_hook_and_a_failing_hook_does_not_break_serving():
    seen = []

    async def main():
        batcher = MicroBatcher(echo, max_batch_size=8, max_latency_ms=0, max_queue=8)
        batcher.on_batch = lambda size, seconds: seen.append((size, seconds))
        await batcher.submit(request(1, 3))
        batcher.on_batch = lambda size, seconds: 1 / 0
        predictions, _ = await batcher.submit(request(2, 1))
        await batcher.close()
        return predictions

    assert run_async(main()) == [400.0]
    assert len(seen) == 1 and seen[0][0] == 3 and seen[0][1] >= 0


def test_cancelled_requests_are_skipped():
    model = Recorder(hold=True)

    async def main():
        batcher = MicroBatcher(
            model, max_batch_size=8, max_latency_ms=0, max_queue=8, mode="thread"
        )
        first = asyncio.ensure_future(batcher.submit(request(0, 1)))
        await asyncio.to_thread(model.started.wait, TIMEOUT)
        gone = asyncio.ensure_future(batcher.submit(request(1, 5)))
        kept = asyncio.ensure_future(batcher.submit(request(2, 1)))
        await asyncio.sleep(0)
        gone.cancel()
        model.gate.set()
        results = await asyncio.gather(first, kept)
        await batcher.close()
        return results

    results = run_async(main())
    assert [r[0] for r in results] == [[0.0], [400.0]]
    assert model.sizes == [1, 1]  # the cancelled request's 5 rows never ran


def test_close_drains_then_refuses_with_503():
    model = Recorder(hold=True)

    async def main():
        batcher = MicroBatcher(
            model, max_batch_size=2, max_latency_ms=0, max_queue=10, mode="thread"
        )
        waiting = [asyncio.ensure_future(batcher.submit(request(i, 1))) for i in range(5)]
        await asyncio.to_thread(model.started.wait, TIMEOUT)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(Closing) as info:
            await batcher.submit(request(9, 1))
        assert not closing.done()
        model.gate.set()
        await closing
        assert all(w.done() and not w.exception() for w in waiting)
        assert batcher.in_flight == 0
        return info.value

    error = run_async(main())
    assert error.http_status == 503 and error.retry_after == 1
    assert model.sizes == [2, 2, 1]  # the 5 arrived in one loop pass: batches of max 2


def test_auto_mode_runs_fast_models_inline_and_slow_ones_in_its_thread():
    async def main(model, inline_below_ms):
        batcher = MicroBatcher(
            model, max_batch_size=8, max_latency_ms=0, max_queue=8, inline_below_ms=inline_below_ms
        )
        assert not batcher.inline  # nothing measured yet: the thread
        threads = set()

        def traced(x):
            threads.add(threading.current_thread().name)
            return model(x)

        batcher.run = traced
        for i in range(5):
            await batcher.submit(request(i, 1))
        await batcher.close()
        return batcher.inline, threads

    inline, threads = run_async(main(echo, 50.0))
    assert inline and threading.main_thread().name in threads
    inline, threads = run_async(main(Recorder(sleep=0.02), 5.0))
    assert not inline and threads == {t for t in threads if t.startswith("mlrig-batch")}


def test_one_batcher_serves_successive_event_loops_when_idle():
    batcher = MicroBatcher(echo, max_batch_size=8, max_latency_ms=0, max_queue=8)
    for i in range(3):
        predictions, _ = run_async(batcher.submit(request(i, 1)))
        assert predictions == [i * 200.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0, "max_latency_ms": 1, "max_queue": 1},
        {"max_batch_size": 1, "max_latency_ms": -1, "max_queue": 1},
        {"max_batch_size": 1, "max_latency_ms": 1, "max_queue": 0},
        {"max_batch_size": 1, "max_latency_ms": 1, "max_queue": 1, "mode": "fast"},
    ],
)
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        MicroBatcher(echo, **kwargs)


def test_wire_schema_and_batcher_with_a_real_sklearn_model():
    """Requests in the three wire formats, checked, batched and answered, give what the
    model itself predicts for each row."""
    pytest.importorskip("sklearn")
    import orjson
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlrig.serving.inputs import InputSchema
    from mlrig.serving.wire import format_response, parse_request

    data = load_breast_cancer()
    x, names = data.data, list(data.feature_names)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, data.target)
    signature = {
        "inputs": {
            "kind": "dataframe",
            "columns": [{"name": n, "dtype": "float64"} for n in names],
            "shape": [-1, 30],
        }
    }
    schema = InputSchema.from_signature(signature, allow_nan=False)

    def run(batch):
        proba = model.predict_proba(batch)
        return proba.argmax(axis=1).tolist(), proba.tolist()

    def body(i: int) -> bytes:
        rows = x[i : i + 1 + i % 3].tolist()
        kind = i % 3
        if kind == 0:
            return orjson.dumps({"inputs": rows, "request_id": f"r{i}"})
        if kind == 1:
            return orjson.dumps({"dataframe_split": {"columns": names, "data": rows}})
        tensor = {"name": "input", "shape": [len(rows), 30], "datatype": "FP64", "data": rows}
        return orjson.dumps({"id": f"r{i}", "inputs": [tensor]})

    async def serve(batcher, i):
        parsed = parse_request(body(i))
        predictions, probabilities = await batcher.submit(schema.to_batch(parsed))
        answer = format_response(
            parsed,
            predictions=predictions,
            probabilities=probabilities,
            model="bc",
            version="1",
            deployment="bc",
            request_id=parsed.request_id or f"r{i}",
        )
        return parsed, orjson.loads(answer)

    async def main():
        batcher = MicroBatcher(run, max_batch_size=16, max_latency_ms=1, max_queue=500)
        answers = await asyncio.gather(*(serve(batcher, i) for i in range(120)))
        await batcher.close()
        return batcher, answers

    batcher, answers = run_async(main())
    for i, (parsed, answer) in enumerate(answers):
        rows = x[i : i + 1 + i % 3]
        expected = model.predict_proba(rows)
        if parsed.protocol == "v2":
            predict, proba = answer["outputs"]
            got = np.array(proba["data"]).reshape(proba["shape"])
            assert predict["data"] == expected.argmax(axis=1).tolist()
        else:
            got = np.array(answer["probabilities"])
            assert answer["predictions"] == expected.argmax(axis=1).tolist()
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert batcher.batches < 120  # concurrent requests shared batches
