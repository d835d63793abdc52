"""The operations the API offers, on numpy arrays, with request micro-batching.

`Engine` turns checked arrays into model outputs: encode, decode, denoise,
upscale, generate. It checks what only the model knows (image size, latent
width, labels, pixel budget) and raises domain errors naming the field.

`Batcher` is the adaptive batching: concurrent requests for the same graph
and the same trailing shape are merged into one onnxruntime call. It never
delays a request to wait for company: a call starts as soon as the previous
one finishes, and whatever arrived meanwhile rides along in the next one
("continuous batching"). So a lone request pays no batching latency, load turns
into bigger batches instead of queues, and no request is refused for having
waited (BentoML's own dispatcher answers 503 when its queue estimate says a
request would wait too long; also it batches one argument only, while our
calls carry model, dataset and labels). One onnxruntime call runs at a time
per worker; when the queue already holds a full call (big requests), its thread
starts it at once instead of waiting for the event loop to hand it over.

A call's rows are spread over `parallel` threads (`AE_THREADS`), each running a
single-threaded session on its share: data parallelism over the batch instead
of onnxruntime's intra-op threads, which split each layer of a 28x28 image
into pieces too small to pay for the synchronisation. JSON batches of 256
images to /denoise: 57 instead of 71 CPU-ms a request, 1.23x the images/s
(docs/PERFORMANCE.md). The cost: a single image (one row) runs on one thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service import codecs
from service.errors import BadInput, TooLarge
from service.registry import Graph, Registry
from service.settings import Settings

log = logging.getLogger(__name__)
GENERATIVE_TASKS = ("vae", "cvae")


@dataclass
class _Job:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future


class Batcher:
    """Merge concurrent runs of one graph on same-shaped inputs into one onnxruntime call."""

    def __init__(
        self,
        max_pixels: int = 64 * 28 * 28,
        observe: Callable[[Graph, int, int], None] | None = None,
        inline_seconds: float = 1e-3,
        parallel: int = 1,
        min_piece_rows: int = 32,
    ):
        self.max_pixels = max_pixels
        self.parallel = parallel
        self.min_piece_rows = min_piece_rows
        self._pieces_pool = (
            ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="onnxruntime-piece")
            if parallel > 1 else None
        )
        self.observe = observe  # (graph, requests, rows) after each call, e.g. a metric
        self._queues: dict[Hashable, deque[_Job]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._lock: asyncio.Lock | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.inline_seconds = inline_seconds
        self._row_cost: dict[int, float] = {}  # graph id -> seconds per row (moving average)
        self.calls = 0  # onnxruntime calls made, for tests and metrics
        self.rows = 0

    async def run(
        self, graph: Graph, feeds: dict[str, np.ndarray], row_pixels: int = 28 * 28
    ) -> dict[str, np.ndarray]:
        """Run `graph` on `feeds` (all with the same batch size), possibly together with others.

        `row_pixels` (image pixels per row, input or output, whichever is larger) sets
        how many rows one call may carry: `max_pixels // row_pixels`. That bounds the
        activations onnxruntime allocates, and so the memory its arena keeps; a job
        larger than that runs in chunks.
        """
        rows = next(iter(feeds.values())).shape[0]
        key = (id(graph), tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(feeds.items())))
        job = _Job(feeds, rows, asyncio.get_running_loop().create_future())
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            limit = max(1, self.max_pixels // max(1, row_pixels))
            task = asyncio.create_task(self._drain(key, graph, queue, limit))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append(job)
        return await job.future

    async def _drain(self, key: Hashable, graph: Graph, queue: deque[_Job], limit: int) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        settle = functools.partial(loop.call_soon_threadsafe, self._settle)
        try:
            while queue:
                async with self._lock:  # one onnxruntime call at a time in this worker
                    jobs = self._take(queue, limit)
                    if not jobs:
                        continue
                    if self._cheap(graph, jobs):
                        self._settle(jobs, self._run_safely(graph, jobs, limit, split=False))
                    else:
                        await loop.run_in_executor(
                            self._executor, self._run_stream, key, graph, jobs, queue, limit, settle
                        )
        finally:
            del self._queues[key]  # no await since `while queue` was false: nothing was added

    def _run_stream(
        self,
        key: Hashable,
        graph: Graph,
        jobs: list[_Job],
        queue: deque[_Job],
        limit: int,
        settle: Callable[[list[_Job], list], object],
    ) -> None:
        """On the executor thread: run `jobs`, then go on with the next call straight from
        `queue` while it holds a full call and no other graph waits.

        Why: a call handed back through the event loop waits for the loop, which may be busy
        parsing the next request's JSON, and onnxruntime idles meanwhile. A full call cannot
        grow by waiting, so starting it at once costs no batching. Results are settled on the
        loop (`settle` is thread-safe) as each call ends. Only this thread takes from `queue`
        while it runs; the loop only appends (deque appends and pops are atomic).
        """
        while True:
            settle(jobs, self._run_safely(graph, jobs, limit))
            if not self._full(queue, limit) or self._others_waiting(key):
                return
            jobs = self._take(queue, limit)
            if not jobs:
                return

    def _full(self, queue: deque[_Job], limit: int) -> bool:
        return sum(job.rows for job in list(queue) if not job.future.cancelled()) >= limit

    def _others_waiting(self, key: Hashable) -> bool:
        return any(q for k, q in list(self._queues.items()) if k != key)

    @staticmethod
    def _settle(jobs: list[_Job], results: list) -> None:
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _run_safely(self, graph: Graph, jobs: list[_Job], limit: int, split: bool = True
                    ) -> list:
        try:
            return self._run_jobs(graph, jobs, limit, split)
        except Exception as err:
            return [err] * len(jobs)

    def _cheap(self, graph: Graph, jobs: list[_Job]) -> bool:
        """True when the call is predicted to take under `inline_seconds`: then it runs on the
        event loop, since handing it to the executor thread costs about as much as running it."""
        cost = self._row_cost.get(id(graph))
        return cost is not None and cost * sum(j.rows for j in jobs) <= self.inline_seconds

    def _take(self, queue: deque[_Job], limit: int) -> list[_Job]:
        jobs: list[_Job] = []
        rows = 0
        while queue and (not jobs or rows + queue[0].rows <= limit):
            job = queue.popleft()
            if job.future.cancelled():  # the client went away
                continue
            jobs.append(job)
            rows += job.rows
        return jobs

    def _pieces(self, rows: int, limit: int, split: bool) -> list[slice]:
        """Row ranges of one call, run `parallel` at a time, each at most `limit` rows (the
        arena's bound per call) and at least `min_piece_rows` where it can: a big call's
        `limit` rows are shared by the threads. Smaller calls run whole: single-image
        requests at concurrency 32 merge into calls of ~30 rows, and splitting those cost
        9 % of the encode requests/s (an A/B run, 8 vs 32 rows)."""
        size = limit
        if split and self._pieces_pool is not None:
            share = -(-min(rows, limit) // self.parallel)
            size = min(limit, max(self.min_piece_rows, share))
        return [slice(i, i + size) for i in range(0, rows, size)]

    def _run_pieces(self, graph: Graph, feeds: dict[str, np.ndarray], pieces: list[slice]
                    ) -> dict[str, np.ndarray]:
        if len(pieces) == 1:
            return graph.run(feeds)
        run = functools.partial(_run_piece, graph, feeds)
        if self._pieces_pool is None:
            parts = [run(piece) for piece in pieces]
        else:
            parts = list(self._pieces_pool.map(run, pieces))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run_jobs(
        self, graph: Graph, jobs: list[_Job], limit: int, split: bool = True
    ) -> list[dict[str, np.ndarray] | Exception]:
        """Run merged jobs (on the executor thread, or inline when cheap). A failing merged
        batch is retried job by job, so one request's problem never fails its neighbours."""
        self.calls += 1
        rows = sum(j.rows for j in jobs)
        self.rows += rows
        if self.observe is not None:
            self.observe(graph, len(jobs), rows)
        if len(jobs) == 1:
            feeds = jobs[0].feeds
        else:
            feeds = {k: np.concatenate([j.feeds[k] for j in jobs]) for k in jobs[0].feeds}
        pieces = self._pieces(rows, limit, split)
        start = time.perf_counter()
        try:
            outputs = self._run_pieces(graph, feeds, pieces)
        except Exception as err:
            if len(jobs) == 1:
                return [err]
            return [r for job in jobs for r in self._run_jobs(graph, [job], limit, split)]
        threads = min(len(pieces), self.parallel)
        per_row = (time.perf_counter() - start) * threads / rows  # one thread's cost
        old = self._row_cost.get(id(graph), per_row)
        self._row_cost[id(graph)] = 0.8 * old + 0.2 * per_row
        if len(jobs) == 1:
            return [outputs]
        bounds = np.cumsum([j.rows for j in jobs])[:-1]
        split = {k: np.split(v, bounds) for k, v in outputs.items()}
        return [{k: parts[i] for k, parts in split.items()} for i in range(len(jobs))]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pieces_pool is not None:
            self._pieces_pool.shutdown(wait=False, cancel_futures=True)


def _run_piece(graph: Graph, feeds: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return graph.run({k: v[rows] for k, v in feeds.items()})


class Engine:
    """The service's operations on numpy arrays; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        observe: Callable[[Graph, int, int], None] | None = None,
    ):
        self.registry = registry
        self.settings = settings
        self.batcher = Batcher(max_pixels=settings.batch_pixels, observe=observe,
                               parallel=settings.threads)

    async def _run(
        self, graph: Graph, feeds: dict[str, np.ndarray], pixels: int, field: str = "images"
    ) -> dict[str, np.ndarray]:
        """Run through the batcher; `pixels` is the larger image size per row, in or out."""
        try:
            return await self.batcher.run(graph, feeds, row_pixels=pixels)
        except Exception as err:
            # Inputs are checked before they get here; this is the safety net that keeps
            # an unforeseen shape from becoming a 500.
            if type(err).__module__.startswith("onnxruntime"):
                log.warning("onnxruntime rejected an input of %s: %s", graph.spec.path, err)
                raise BadInput(field, f"the model rejected this input: {err}") from err
            raise

    def _labels(self, graph: Graph, labels, n: int, field: str = "labels") -> dict:
        """The label feed for conditional graphs; BadInput if missing, or given to others."""
        entry = graph.entry
        if graph.label_input is None:
            if labels is not None:
                raise BadInput(field, f"model {entry.name!r} is not conditional; drop {field!r}")
            return {}
        if labels is None:
            raise BadInput(
                field,
                f"model {entry.name!r} needs a class label per row (0..{_classes(entry) - 1})",
            )
        return {
            graph.label_input: codecs.labels_array(
                labels, n=n, num_classes=_classes(entry), field=field
            )
        }

    def _check_pixels(self, n: int, h: int, w: int, scale: int = 1, field: str = "images") -> None:
        pixels = n * h * w * scale * scale
        if pixels > self.settings.max_pixels:
            raise TooLarge(
                field,
                f"{n} images of {h * scale}x{w * scale} make {pixels} output pixels, "
                f"over the limit of {self.settings.max_pixels}",
            )

    async def encode(self, images: np.ndarray, *, model: str, dataset: str, labels=None) -> dict:
        """`[N,1,s,s]` images -> {"latents": [N,d]} (+ "logvar" for the VAEs)."""
        graph = self.registry.graph(dataset, model, "encoder")
        size = graph.entry.image_size
        if images.shape[2:] != (size, size):
            raise BadInput(
                "images",
                f"{model} encodes {size}x{size} images, got {images.shape[2]}x{images.shape[3]} "
                "(upload a PNG/JPEG to /encode_file to have it resized)",
            )
        feeds = {graph.data_input: images, **self._labels(graph, labels, images.shape[0])}
        out = await self._run(graph, feeds, pixels=size * size)
        if len(graph.output_names) >= 2:
            return {"latents": out[graph.output("mean")], "logvar": out[graph.output("logvar", 1)]}
        return {"latents": out[graph.output("latent")]}

    async def decode(
        self, latents: np.ndarray, *, model: str, dataset: str, labels=None
    ) -> np.ndarray:
        """`[N,d]` latents -> `[N,H,W]` images (the `image` output, never `logits`)."""
        graph = self.registry.graph(dataset, model, "decoder")
        latents = codecs.as_latent_batch(
            latents, dim=_latent_dim(graph), max_batch=self.settings.max_batch
        )
        feeds = {graph.data_input: latents, **self._labels(graph, labels, latents.shape[0])}
        out = await self._run(graph, feeds, pixels=_image_pixels(graph), field="latents")
        return out[graph.output("image")][:, 0]

    async def denoise(
        self, images: np.ndarray, *, dataset: str, model: str = "denoiser"
    ) -> np.ndarray:
        """`[N,1,H,W]` -> `[N,H,W]`, same size."""
        graph = self.registry.graph(dataset, model, "model")
        h, w = images.shape[2:]
        self._check_pixels(images.shape[0], h, w)
        out = await self._run(graph, {graph.data_input: images}, pixels=h * w)
        return out[graph.output_names[0]][:, 0]

    async def upscale(self, images: np.ndarray, *, factor: int, dataset: str) -> np.ndarray:
        """`[N,1,H,W]` -> `[N,fH,fW]` with the `upscaler_x{factor}` model."""
        if factor not in (2, 4):
            raise BadInput("factor", f"factor must be 2 or 4, got {factor}")
        graph = self.registry.graph(dataset, f"upscaler_x{factor}", "model", field="factor")
        h, w = images.shape[2:]
        self._check_pixels(images.shape[0], h, w, scale=factor)
        out = await self._run(graph, {graph.data_input: images}, pixels=h * w * factor * factor)
        return out[graph.output_names[0]][:, 0]

    async def generate(
        self,
        *,
        model: str,
        dataset: str,
        n: int = 16,
        seed: int | None = None,
        temperature: float = 1.0,
        label: int | None = None,
        latents: np.ndarray | None = None,
        grid: int | None = None,
    ) -> dict:
        """Sample z ~ N(0, temperature^2 I) and decode; or decode given latents or a 2-D grid.

        z = numpy.random.default_rng(seed).standard_normal((n, d)) * temperature, cast to
        float32, so a client can reproduce the latents exactly. Returns images, latents,
        labels (cvae), seed and the grid column count.
        """
        graph = self.registry.graph(dataset, model, "decoder")
        entry = graph.entry
        if entry.task not in GENERATIVE_TASKS:
            raise BadInput("model", f"{model!r} is not generative; use vae, vae2d or cvae")
        dim = _latent_dim(graph)
        columns = None
        if latents is not None and grid is not None:
            raise BadInput("grid", "give either latents or grid, not both")
        if latents is not None:
            z = codecs.as_latent_batch(latents, dim=dim, max_batch=self.settings.max_n)
        elif grid is not None:
            if dim != 2:
                raise BadInput("grid", f"a latent grid needs a 2-D latent space; {model} has {dim}")
            if grid * grid > self.settings.max_n:
                raise TooLarge(
                    "grid", f"{grid}x{grid} points is over the limit n <= {self.settings.max_n}"
                )
            axis = np.linspace(-2.0, 2.0, grid) * temperature
            xs, ys = np.meshgrid(axis, axis[::-1])  # rows top to bottom: z2 decreasing
            z = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
            columns = grid
        else:
            if n > self.settings.max_n:
                raise TooLarge("n", f"n={n} is over the limit of {self.settings.max_n}")
            seed = secrets.randbelow(2**31) if seed is None else seed
            rng = np.random.default_rng(seed)
            z = (rng.standard_normal((n, dim)) * temperature).astype(np.float32)
        count = z.shape[0]
        labels = None
        if graph.label_input is not None:
            classes = _classes(entry)
            labels = np.arange(count, dtype=np.int64) % classes if label is None else label
        elif label is not None:
            raise BadInput("label", f"model {model!r} is not conditional; use cvae for a class")
        feeds = {graph.data_input: z, **self._labels(graph, labels, count, field="label")}
        out = await self._run(graph, feeds, pixels=_image_pixels(graph), field="latents")
        return {
            "images": out[graph.output("image")][:, 0],
            "latents": z,
            "labels": feeds.get(graph.label_input) if graph.label_input else None,
            "seed": seed if latents is None and grid is None else None,
            "columns": columns,
        }


def _latent_dim(graph: Graph) -> int:
    if graph.entry.latent_dim:
        return graph.entry.latent_dim
    dim = graph.spec.inputs[0].shape[-1]
    if not isinstance(dim, int):
        raise BadInput("model", f"{graph.entry.name} does not declare its latent size")
    return dim


def _image_pixels(graph: Graph) -> int:
    """Pixels of a decoder's output image."""
    size = graph.entry.image_size
    return size * size


def _classes(entry) -> int:
    return entry.num_classes or 10
