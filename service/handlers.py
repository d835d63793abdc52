"""From a parsed request to response bytes: decode the input, call the engine, render.

One function per endpoint; the BentoML methods in `service.service` only call
these and translate domain errors to HTTP. Keeping this layer free of BentoML
lets the tests drive every endpoint without a server.

Formats. JSON endpoints answer JSON unless `format` (or the `Accept` header)
asks for `png` (one image, or a grid of all) or `npy`. `_file` endpoints take
the file itself as the body (PNG, JPEG or `.npy`, recognised by its first bytes)
and their options from the query string; they answer in kind: an image for an
image, `.npy` for `.npy`, JSON for latents of an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

from service import codecs
from service.errors import BadInput
from service.inference import Engine
from service.schemas import (
    DecodeOptions,
    DecodeRequest,
    DenoiseOptions,
    DenoiseRequest,
    EncodeOptions,
    EncodeRequest,
    GenerateRequest,
    UpscaleOptions,
    UpscaleRequest,
)

JSON, PNG, NPY = "application/json", "image/png", "application/x-npy"
MEDIA_TYPES = {"json": JSON, "png": PNG, "npy": NPY}


@dataclass
class Reply:
    """An endpoint's result before rendering."""

    fields: dict[str, Any]  # the JSON answer
    npy: np.ndarray  # what `.npy` carries
    images: np.ndarray | None = None  # [N,H,W], for PNG
    columns: int | None = None  # grid width for PNG
    default: str = "json"  # format when neither `format` nor `Accept` chooses
    extra: dict[str, str] = field(default_factory=dict)


def render(reply: Reply, fmt: str | None, accept: str = "") -> tuple[bytes, str]:
    """Bytes and media type of `reply` in the requested format."""
    fmt = fmt or _from_accept(accept, has_images=reply.images is not None) or reply.default
    if fmt == "png":
        if reply.images is None:
            raise BadInput("format", "png is only available for image results; use json or npy")
        return codecs.png_bytes(reply.images, reply.columns), PNG
    if fmt == "npy":
        return codecs.npy_bytes(reply.npy), NPY
    return codecs.dumps_json(reply.fields), JSON


def _from_accept(accept: str, has_images: bool) -> str | None:
    accept = accept.lower()
    if NPY in accept:
        return "npy"
    if PNG in accept and has_images and JSON not in accept:
        return "png"
    return None


def query_options(model: type[BaseModel], params: dict[str, str]) -> Any:
    """Options of a `_file` endpoint from its query string (numbers parsed as JSON)."""
    values: dict[str, Any] = {}
    for key, raw in params.items():
        try:
            values[key] = int(raw)
        except ValueError:
            values[key] = raw
    return model.model_validate(values)


def _limits(engine: Engine) -> dict[str, int]:
    return {"max_batch": engine.settings.max_batch, "max_side": engine.settings.max_image_side}


def images_from_file(
    engine: Engine, body: bytes, size: int | None = None
) -> tuple[np.ndarray, str]:
    """A PNG/JPEG/`.npy` body -> float32 `[N,1,H,W]` and the kind it was ('image' or 'npy')."""
    kind = codecs.sniff(body)
    if kind == "npy":
        array = codecs.read_npy(body, images=True)
        return codecs.as_image_batch(array, field="body", **_limits(engine)), "npy"
    if kind in ("png", "jpeg"):
        image = codecs.read_image(body, max_side=engine.settings.max_image_side, size=size)
        return image[None, None], "image"
    if not body or body == b"{}":  # BentoML hands an empty body over as "{}"
        raise BadInput("body", "empty: send a PNG, JPEG or .npy file as the request body")
    raise BadInput("body", "not a PNG, JPEG or .npy file")


# ------------------------------------------------------------------ encode


async def _encode(engine: Engine, images: np.ndarray, opts: EncodeOptions, default: str) -> Reply:
    out = await engine.encode(images, model=opts.model, dataset=opts.dataset, labels=opts.labels)
    return Reply(fields=out, npy=out["latents"], default=default)


async def encode(engine: Engine, req: EncodeRequest) -> Reply:
    images = codecs.images_from_json(req.images, **_limits(engine))
    return await _encode(engine, images, req, "json")


async def encode_file(engine: Engine, body: bytes, opts: EncodeOptions) -> Reply:
    entry = engine.registry.entry(opts.dataset, opts.model)
    images, kind = images_from_file(engine, body, size=entry.image_size)
    return await _encode(engine, images, opts, "npy" if kind == "npy" else "json")


# ------------------------------------------------------------------ decode


async def _decode(engine: Engine, latents: np.ndarray, opts: DecodeOptions, default: str) -> Reply:
    images = await engine.decode(
        latents, model=opts.model, dataset=opts.dataset, labels=opts.labels
    )
    return Reply(fields={"images": images}, npy=images, images=images, default=default)


async def decode(engine: Engine, req: DecodeRequest) -> Reply:
    latents = codecs.numeric_array(req.latents, "latents")
    return await _decode(engine, latents, req, "json")


async def decode_file(engine: Engine, body: bytes, opts: DecodeOptions) -> Reply:
    if codecs.sniff(body) != "npy":
        raise BadInput("body", "send the latents as a .npy file (float32 [N,d])")
    return await _decode(engine, codecs.read_npy(body, images=False), opts, "npy")


# ------------------------------------------------------------------ denoise / upscale


def _image_reply(images: np.ndarray, default: str) -> Reply:
    return Reply(fields={"images": images}, npy=images, images=images, default=default)


async def denoise(engine: Engine, req: DenoiseRequest) -> Reply:
    images = codecs.images_from_json(req.images, **_limits(engine))
    return _image_reply(await engine.denoise(images, dataset=req.dataset, model=req.model), "json")


async def denoise_file(engine: Engine, body: bytes, opts: DenoiseOptions) -> Reply:
    images, kind = images_from_file(engine, body)
    out = await engine.denoise(images, dataset=opts.dataset, model=opts.model)
    return _image_reply(out, "npy" if kind == "npy" else "png")


async def upscale(engine: Engine, req: UpscaleRequest) -> Reply:
    images = codecs.images_from_json(req.images, **_limits(engine))
    return _image_reply(
        await engine.upscale(images, factor=req.factor, dataset=req.dataset), "json"
    )


async def upscale_file(engine: Engine, body: bytes, opts: UpscaleOptions) -> Reply:
    images, kind = images_from_file(engine, body)
    out = await engine.upscale(images, factor=opts.factor, dataset=opts.dataset)
    return _image_reply(out, "npy" if kind == "npy" else "png")


# ------------------------------------------------------------------ generate


async def generate(engine: Engine, req: GenerateRequest) -> Reply:
    latents = None if req.latents is None else codecs.numeric_array(req.latents, "latents")
    out = await engine.generate(
        model=req.model,
        dataset=req.dataset,
        n=req.n,
        seed=req.seed,
        temperature=req.temperature,
        label=req.label,
        latents=latents,
        grid=req.grid,
    )
    columns = out.pop("columns")
    return Reply(fields=out, npy=out["images"], images=out["images"], columns=columns)
