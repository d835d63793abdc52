"""The BentoML service: HTTP endpoints over the exported autoencoders.

Serve from the repository root with `bentoml serve` (port 3000; the OpenAPI
page is at http://localhost:3000/). Configuration comes from `AE_*` variables
(`service.settings`). JSON endpoints take a JSON body; `*_file` endpoints take
a PNG, JPEG or `.npy` file as the body and their options from the query
string. See `service/README.md` for examples.

This file only declares endpoints and turns domain errors into 4xx answers;
decoding, inference and rendering live in `handlers`, `inference`, `codecs`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any

import bentoml
import orjson
import pydantic
from bentoml.validators import ContentType
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import handlers
from service.errors import ServiceError
from service.heap import return_large_buffers_to_os
from service.inference import Engine
from service.middleware import GateMiddleware
from service.registry import Graph, Registry, verify_models
from service.schemas import (
    DecodeOptions,
    DecodeRequest,
    DenoiseOptions,
    DenoiseRequest,
    EncodeOptions,
    EncodeRequest,
    EncodeResponse,
    GenerateRequest,
    GenerateResponse,
    ImagesResponse,
    ModelsResponse,
    UpscaleOptions,
    UpscaleRequest,
)
from service.settings import get_settings


class _QuietClientErrors(logging.Filter):
    """BentoML logs a full traceback for every request that fails validation (a 400):
    one warning line says enough about a client's mistake."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, pydantic.ValidationError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"{record.msg}: 400, {exc.error_count()} invalid field(s)"
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(_QuietClientErrors())
settings = get_settings()
# `bentoml serve` and `bentoml build` import this module before any worker starts: a missing or
# tampered model file stops them here, with its name, instead of in a worker restart loop.
verify_models(settings.models_dir)
BATCH_REQUESTS = bentoml.metrics.Histogram(
    name="ae_batch_requests",
    documentation="Requests merged into one onnxruntime call (adaptive batching)",
    labelnames=["dataset", "model", "role"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
FileBody = Annotated[bytes, ContentType("application/octet-stream")]
FileOut = Annotated[Path, ContentType("image/png")]


def _observe_batch(graph: Graph, requests: int, rows: int) -> None:
    entry = graph.entry
    BATCH_REQUESTS.labels(dataset=entry.dataset, model=entry.name, role=graph.role).observe(
        requests
    )


async def _get_models(request: Request) -> Response:
    """`GET /models`, for browsers and plain curl: the same answer as `POST /models`."""
    return Response(bentoml.get_current_service().models_json, media_type=handlers.JSON)


browse = Starlette(routes=[Route("/models", _get_models, methods=["GET"])])


@bentoml.asgi_app(browse, path="/")
@bentoml.service(
    name="autoencoders",
    workers=settings.workers,
    # No max_concurrency: queueing is the batcher's job, and a waiting request is served, not 503'd.
    # BentoML keeps each request's timeout timer alive until it expires (~250 B each): a short
    # timeout bounds that memory (rate x timeout); 60 s still covers the largest allowed request.
    traffic={"timeout": 60},
    # Per-request access log lines and (never exported) spans were a large share of a
    # single-image request's CPU in profiles: off unless asked for. Prometheus metrics stay on.
    logging={"access": {"enabled": settings.access_log}},
    tracing={} if settings.tracing else {"excluded_urls": [".*"]},
)
class Autoencoders:
    """Encode, decode, denoise, upscale and generate MNIST / Fashion-MNIST images."""

    def __init__(self) -> None:
        return_large_buffers_to_os()
        self.settings = get_settings()
        # Single-threaded sessions; the batcher runs `threads` of them at once (see Batcher).
        self.registry = Registry.open(self.settings.models_dir, threads=1,
                                      preload=self.settings.preload)
        self.engine = Engine(self.registry, self.settings, observe=_observe_batch)
        payload = self.registry.manifest.model_dump(mode="json")
        self.models_json = orjson.dumps({**payload, "limits": self.settings.limits()})
        # Everything allocated so far lives as long as the worker: move it out of the
        # collector's sight, so full collections stop pausing all waiting requests
        # (p99 of single-image requests at concurrency 32: 96 -> 40 ms, docs/PERFORMANCE.md).
        gc.collect()
        gc.freeze()

    async def _answer(self, ctx: bentoml.Context, reply: Awaitable[handlers.Reply], fmt=None):
        """Await a handler, render its reply, or turn a domain error into its 4xx."""
        try:
            body, media = handlers.render(await reply, fmt, ctx.request.headers.get("accept", ""))
        except ServiceError as err:
            ctx.response.status_code = err.status  # BentoML copies it onto returned responses
            body, media = orjson.dumps(err.to_dict()), handlers.JSON
            return Response(body, status_code=err.status, media_type=media)
        return Response(body, media_type=media)

    def _options(self, ctx: bentoml.Context, model: type) -> Any:
        return handlers.query_options(model, dict(ctx.request.query_params))

    # ------------------------------------------------------------ JSON endpoints

    @bentoml.api(input_spec=EncodeRequest)
    async def encode(self, ctx: bentoml.Context, **request: Any) -> EncodeResponse:
        """Images -> latent codes (`latents`; also `logvar` for vae, vae2d, cvae)."""
        req = EncodeRequest.model_construct(**request)
        return await self._answer(ctx, handlers.encode(self.engine, req), req.format)

    @bentoml.api(input_spec=DecodeRequest)
    async def decode(self, ctx: bentoml.Context, **request: Any) -> ImagesResponse:
        """Latent codes -> images (pixel probabilities for the VAEs)."""
        req = DecodeRequest.model_construct(**request)
        return await self._answer(ctx, handlers.decode(self.engine, req), req.format)

    @bentoml.api(input_spec=DenoiseRequest)
    async def denoise(self, ctx: bentoml.Context, **request: Any) -> ImagesResponse:
        """Noisy images (any size up to the limit) -> clean images of the same size."""
        req = DenoiseRequest.model_construct(**request)
        return await self._answer(ctx, handlers.denoise(self.engine, req), req.format)

    @bentoml.api(input_spec=UpscaleRequest)
    async def upscale(self, ctx: bentoml.Context, **request: Any) -> ImagesResponse:
        """Images -> images `factor` (2 or 4) times larger."""
        req = UpscaleRequest.model_construct(**request)
        return await self._answer(ctx, handlers.upscale(self.engine, req), req.format)

    @bentoml.api(input_spec=GenerateRequest)
    async def generate(self, ctx: bentoml.Context, **request: Any) -> GenerateResponse:
        """New images from the prior (same seed, same images), given latents, or a 2-D grid."""
        req = GenerateRequest.model_construct(**request)
        return await self._answer(ctx, handlers.generate(self.engine, req), req.format)

    @bentoml.api
    async def models(self) -> ModelsResponse:
        """The manifest as served (models, metrics, checksums) and this deployment's limits."""
        return Response(self.models_json, media_type=handlers.JSON)

    # ------------------------------------------------------------ file endpoints

    @bentoml.api
    async def encode_file(self, body: FileBody, /, ctx: bentoml.Context) -> EncodeResponse:
        """PNG/JPEG (resized to 28x28) or `.npy` `[N,28,28]` -> latents (JSON; `.npy` for `.npy`).
        Query: `model` (ae|vae|vae2d|cvae), `dataset`, `labels` (cvae: `3` or `1,2,3`), `format`."""
        opts = self._options(ctx, EncodeOptions)
        return await self._answer(ctx, handlers.encode_file(self.engine, body, opts), opts.format)

    @bentoml.api
    async def decode_file(self, body: FileBody, /, ctx: bentoml.Context) -> FileOut:
        """`.npy` latents `[N,d]` -> `.npy` images `[N,28,28]` (or `format=png|json`).
        Query: `model` (ae|vae|vae2d|cvae), `dataset`, `labels` (cvae), `format`."""
        opts = self._options(ctx, DecodeOptions)
        return await self._answer(ctx, handlers.decode_file(self.engine, body, opts), opts.format)

    @bentoml.api
    async def denoise_file(self, body: FileBody, /, ctx: bentoml.Context) -> FileOut:
        """PNG/JPEG -> PNG; `.npy` `[N,H,W]` -> `.npy`. Query: `dataset`, `format`."""
        opts = self._options(ctx, DenoiseOptions)
        return await self._answer(ctx, handlers.denoise_file(self.engine, body, opts), opts.format)

    @bentoml.api
    async def upscale_file(self, body: FileBody, /, ctx: bentoml.Context) -> FileOut:
        """PNG/JPEG -> PNG; `.npy` -> `.npy`, `factor` times larger.
        Query: `factor` (2|4), `dataset`, `format`."""
        opts = self._options(ctx, UpscaleOptions)
        return await self._answer(ctx, handlers.upscale_file(self.engine, body, opts), opts.format)


Autoencoders.add_asgi_middleware(
    GateMiddleware,
    routes={
        m.route: "file" if name.endswith("_file") else "json"
        for name, m in Autoencoders.apis.items()
    },
    max_body=settings.max_request_bytes,
    api_key=settings.api_key,
)
