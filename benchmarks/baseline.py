"""BASELINE ONLY: the FastAPI + onnxruntime server a user would write instead of the service.

Not part of the product. The benchmark compares the service with it, so it does
the same work on the same graphs with the same JSON contract, for the endpoints
the benchmark drives, written the way FastAPI's documentation teaches:

- `POST /encode` `{"images": [N,28,28], "model": "ae", "dataset": "mnist"}` ->
  `{"latents": [N,d]}` (plus `logvar` for the VAEs);
- `POST /denoise` `{"images": [N,H,W], "dataset": "mnist"}` -> `{"images": [N,H,W]}`;
- `GET /readyz` -> 200 once the sessions are open.

Typed pydantic request and response models, plain `def` endpoints (FastAPI runs
them in its thread pool), `numpy.asarray` on the parsed lists, `.tolist()` on the
way out, one `onnxruntime.InferenceSession` per graph with default options, and
the same checks as the service: shape, pixels in [0,1], finite values, batch
limit, unknown model or dataset. Only the `[N,H,W]` image layout is accepted.

Run: `AE_MODELS_DIR=exported_models uvicorn benchmarks.baseline:create_app --factory`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

MAX_BATCH = int(os.environ.get("AE_MAX_BATCH", "2048"))


class EncodeRequest(BaseModel):
    images: list[list[list[float]]]
    model: str = "ae"
    dataset: str = "mnist"


class EncodeResponse(BaseModel):
    latents: list[list[float]]
    logvar: list[list[float]] | None = None


class DenoiseRequest(BaseModel):
    images: list[list[list[float]]]
    dataset: str = "mnist"


class ImagesResponse(BaseModel):
    images: list[list[list[float]]]


def _open_sessions(models_dir: Path) -> dict[tuple[str, str, str], ort.InferenceSession]:
    manifest = json.loads((models_dir / "manifest.json").read_text())
    sessions = {}
    for entry in manifest["models"]:
        for role, spec in entry["files"].items():
            sessions[(entry["dataset"], entry["name"], role)] = ort.InferenceSession(
                str(models_dir / spec["path"]), providers=["CPUExecutionProvider"]
            )
    return sessions


def _pixels(images: list[list[list[float]]]) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3 or x.size == 0:
        raise HTTPException(400, "images must be a non-empty [N,H,W] array")
    if x.shape[0] > MAX_BATCH:
        raise HTTPException(413, f"at most {MAX_BATCH} images per request")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise HTTPException(400, "pixels must be finite and lie in [0,1]")
    return x[:, None]


def create_app() -> FastAPI:
    """The baseline app over `$AE_MODELS_DIR` (default `exported_models`)."""
    models_dir = Path(os.environ.get("AE_MODELS_DIR", "exported_models"))
    sessions = _open_sessions(models_dir)
    app = FastAPI(title="baseline (FastAPI + onnxruntime)")

    def session(dataset: str, model: str, role: str) -> ort.InferenceSession:
        try:
            return sessions[(dataset, model, role)]
        except KeyError:
            raise HTTPException(400, f"unknown model {model!r} for dataset {dataset!r}") from None

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    @app.post("/encode", response_model=EncodeResponse, response_model_exclude_none=True)
    def encode(req: EncodeRequest) -> dict:
        sess = session(req.dataset, req.model, "encoder")
        x = _pixels(req.images)
        if x.shape[2:] != (28, 28):
            raise HTTPException(400, "encode takes 28x28 images")
        feeds = {sess.get_inputs()[0].name: x}
        outputs = sess.run(None, feeds)
        answer = {"latents": outputs[0].tolist()}
        if len(outputs) > 1:
            answer["logvar"] = outputs[1].tolist()
        return answer

    @app.post("/denoise", response_model=ImagesResponse)
    def denoise(req: DenoiseRequest) -> dict:
        sess = session(req.dataset, "denoiser", "model")
        x = _pixels(req.images)
        (out,) = sess.run(None, {sess.get_inputs()[0].name: x})
        return {"images": out[:, 0].tolist()}

    return app
