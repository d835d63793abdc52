"""Engine and batcher without HTTP: merging, isolation, determinism, model checks."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.errors import BadInput, TooLarge, UnknownModel
from service.inference import Batcher, Engine
from service.registry import Registry
from service.settings import Settings


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> Engine:
    settings = Settings(models_dir=tiny_models_dir, max_n=64, max_pixels=100_000)
    return Engine(Registry.open(tiny_models_dir), settings)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_merged(engine: Engine, digit_images, reference):
    images = digit_images[:24, None]
    calls_before = engine.batcher.calls

    async def burst():
        jobs = [engine.encode(images[i : i + 1], model="vae", dataset="mnist") for i in range(24)]
        return await asyncio.gather(*jobs)

    results = run(burst())
    assert engine.batcher.calls - calls_before < 24  # merged into fewer onnxruntime calls
    mean, logvar = reference.run("mnist", "vae", "encoder", images)
    np.testing.assert_allclose(np.concatenate([r["latents"] for r in results]), mean, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([r["logvar"] for r in results]), logvar, atol=1e-5)


class _Graph:
    """A stand-in graph that fails on any batch holding a negative number."""

    def run(self, feeds):
        x = feeds["x"]
        if (x < 0).any():
            raise RuntimeError("negative")
        return {"y": x * 2}


def test_one_bad_job_does_not_fail_its_batch():
    batcher = Batcher(max_pixels=100)
    graph = _Graph()

    async def burst():
        jobs = [batcher.run(graph, {"x": np.full((2, 3), v, np.float32)}) for v in (1, -1, 3)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    good, bad, also_good = run(burst())
    np.testing.assert_array_equal(good["y"], np.full((2, 3), 2))
    assert isinstance(bad, RuntimeError)
    np.testing.assert_array_equal(also_good["y"], np.full((2, 3), 6))


def test_calls_respect_the_pixel_budget():
    seen = []
    batcher = Batcher(max_pixels=40, observe=lambda graph, requests, rows: seen.append(rows))
    graph = _Graph()

    async def burst():
        three = [
            batcher.run(graph, {"x": np.ones((3, 2), np.float32)}, row_pixels=10) for _ in range(3)
        ]
        big = batcher.run(graph, {"x": np.arange(10, dtype=np.float32)[:, None]}, row_pixels=10)
        return await asyncio.gather(*three, big)

    *_, big = run(burst())
    assert sorted(seen) == [3, 3, 3, 10]  # 4 rows a call: requests of 3 run alone
    np.testing.assert_array_equal(big["y"][:, 0], np.arange(10) * 2)  # ran in chunks, joined
    assert batcher.calls == 4


class _SlowGraph:
    """A stand-in graph that takes 30 ms a call and notes when each call started."""

    def __init__(self):
        self.starts: list[float] = []

    def run(self, feeds):
        self.starts.append(time.perf_counter())
        time.sleep(0.03)
        return {"y": feeds["x"] * 2}


def test_full_calls_start_without_waiting_for_the_event_loop():
    """Queued calls that are already full start back to back on the onnxruntime thread,
    even while the event loop is busy (say parsing a big request)."""
    batcher = Batcher(max_pixels=40)
    graph = _SlowGraph()

    async def burst():
        jobs = [
            asyncio.ensure_future(
                batcher.run(graph, {"x": np.full((4, 1), v, np.float32)}, row_pixels=10)
            )
            for v in range(3)
        ]
        await asyncio.sleep(0.005)  # the first call is running, the other two queued
        time.sleep(0.25)  # the loop is busy: no callback runs for 250 ms
        busy_until = time.perf_counter()
        return busy_until, await asyncio.gather(*jobs)

    busy_until, results = run(burst())
    assert len(graph.starts) == 3 and all(start < busy_until for start in graph.starts)
    for v, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((4, 1), 2 * v))
    assert batcher.calls == 3


def test_a_stream_of_full_calls_lets_other_graphs_in():
    """While one graph's full calls stream on the onnxruntime thread, a request for another
    graph runs after the current call, not after the whole stream."""
    order: list[str] = []

    class Named(_SlowGraph):
        def __init__(self, name: str):
            super().__init__()
            self.name = name

        def run(self, feeds):
            order.append(self.name)
            return super().run(feeds)

    batcher = Batcher(max_pixels=40)
    big, small = Named("big"), Named("small")

    async def burst():
        stream = [
            asyncio.ensure_future(batcher.run(big, {"x": np.ones((4, 1), np.float32)}, 10))
            for _ in range(3)
        ]
        await asyncio.sleep(0.01)  # the first big call is running
        lone = await batcher.run(small, {"x": np.ones((1, 1), np.float32)}, 10)
        return lone, await asyncio.gather(*stream)

    lone, _ = run(burst())
    np.testing.assert_array_equal(lone["y"], [[2.0]])
    assert order == ["big", "small", "big", "big"]


@pytest.mark.parametrize(("rows", "limit", "split", "min_rows", "sizes"), [
    (256, 64, True, 32, [32] * 8),  # a big job: 64 rows in flight, 32 on each of 2 threads
    (40, 64, True, 32, [32, 8]),
    (32, 64, True, 32, [32]),  # the default: calls of up to 32 rows run whole
    (32, 64, True, 8, [16, 16]),
    (12, 64, True, 8, [8, 4]),  # no piece under min_rows
    (10, 4, True, 32, [4, 4, 2]),  # ... nor over the call's limit (big images: few rows)
    (256, 64, False, 8, [64] * 4),  # inline calls are never split
])
def test_calls_are_split_over_the_threads(rows, limit, split, min_rows, sizes):
    batcher = Batcher(parallel=2, min_piece_rows=min_rows)
    pieces = batcher._pieces(rows, limit, split)
    assert [min(p.stop, rows) - p.start for p in pieces] == sizes
    assert pieces[0].start == 0
    assert all(a.stop == b.start for a, b in zip(pieces, pieces[1:], strict=False))
    assert Batcher()._pieces(rows, limit, split) == [
        slice(i, i + limit) for i in range(0, rows, limit)]  # one thread: chunks of the limit


def test_pieces_run_in_parallel_in_order_within_the_row_budget():
    """A big job runs as pieces on two threads at once, never more than the call's rows in
    flight, and comes back joined in order."""
    flight, peak, lock = [0], [0], threading.Lock()

    class Counting(_SlowGraph):
        def run(self, feeds):
            with lock:
                flight[0] += len(feeds["x"])
                peak[0] = max(peak[0], flight[0])
            try:
                return super().run(feeds)
            finally:
                with lock:
                    flight[0] -= len(feeds["x"])

    batcher = Batcher(max_pixels=16 * 10, parallel=2, min_piece_rows=2)
    graph = Counting()
    x = np.arange(64, dtype=np.float32)[:, None]
    start = time.perf_counter()
    out = run(batcher.run(graph, {"x": x}, row_pixels=10))
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(out["y"], x * 2)
    assert len(graph.starts) == 8 and peak[0] == 16  # 8 pieces of 8 rows, 2 at a time
    assert elapsed < 8 * 0.03 * 0.75  # sequential would take 8 x 30 ms


def test_generate_is_reproducible(engine: Engine, reference):
    first = run(engine.generate(model="vae", dataset="mnist", n=5, seed=7, temperature=0.8))
    again = run(engine.generate(model="vae", dataset="mnist", n=5, seed=7, temperature=0.8))
    np.testing.assert_array_equal(first["images"], again["images"])
    z = (np.random.default_rng(7).standard_normal((5, 16)) * 0.8).astype(np.float32)
    np.testing.assert_array_equal(first["latents"], z)
    image, _logits = reference.run("mnist", "vae", "decoder", z)
    np.testing.assert_allclose(first["images"], image[:, 0], atol=1e-5)
    other = run(engine.generate(model="vae", dataset="mnist", n=5, seed=8))
    assert not np.array_equal(first["images"], other["images"])


def test_generate_variants(engine: Engine):
    grid = run(engine.generate(model="vae2d", dataset="mnist", grid=4))
    assert grid["images"].shape == (16, 28, 28) and grid["columns"] == 4 and grid["seed"] is None
    assert grid["latents"][0].tolist() == [-2.0, 2.0]  # top-left corner
    cvae = run(engine.generate(model="cvae", dataset="mnist", n=12, seed=0))
    assert cvae["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    three = run(engine.generate(model="cvae", dataset="mnist", n=3, seed=0, label=3))
    assert three["labels"].tolist() == [3, 3, 3]
    for kwargs, field in [
        ({"model": "ae"}, "model"),
        ({"model": "vae", "grid": 3}, "grid"),
        ({"model": "vae", "label": 2}, "label"),
        ({"model": "cvae", "label": 10}, "label"),
        ({"model": "vae", "latents": np.zeros((2, 3))}, "latents"),
    ]:
        with pytest.raises(BadInput) as err:
            run(engine.generate(dataset="mnist", **kwargs))
        assert err.value.field == field
    with pytest.raises(TooLarge):
        run(engine.generate(model="vae", dataset="mnist", n=65))


def test_model_checks(engine: Engine, digit_images):
    with pytest.raises(BadInput, match="28x28"):
        run(engine.encode(np.zeros((1, 1, 20, 20), np.float32), model="ae", dataset="mnist"))
    with pytest.raises(BadInput, match="not conditional"):
        run(engine.encode(digit_images[:1, None], model="ae", dataset="mnist", labels=[1]))
    with pytest.raises(BadInput, match="factor"):
        run(engine.upscale(digit_images[:1, None], factor=3, dataset="mnist"))
    with pytest.raises(TooLarge, match="output pixels"):
        run(engine.upscale(np.zeros((10, 1, 64, 64), np.float32), factor=4, dataset="mnist"))
    with pytest.raises(UnknownModel):
        run(engine.decode(np.zeros((1, 16), np.float32), model="gan", dataset="mnist"))
