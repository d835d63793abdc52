"""The bad-input matrix: each answered 4xx, in JSON, naming the field; the server keeps serving."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service import codecs

pytestmark = pytest.mark.integration

IMG = np.full((28, 28), 0.5).tolist()
NPY = {"Content-Type": "application/x-npy"}
PNG = {"Content-Type": "image/png"}
JSON = {"Content-Type": "application/json"}


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


# (path, json body | raw bytes, headers, status, field named in detail[0].loc)
CASES = [
    # shapes and sizes
    ("/encode", {"images": [[[[[0.5]]]]]}, None, 400, "images"),
    ("/encode", {"images": np.zeros((2, 20, 20)).tolist()}, None, 400, "images"),
    ("/encode", {"images": [[0.1, 0.2], [0.3]]}, None, 400, "images"),
    ("/decode", {"latents": [[0.0] * 3]}, None, 400, "latents"),
    ("/decode", {"latents": [[0.0] * 2], "model": "vae2d", "labels": [1]}, None, 400, "labels"),
    ("/decode", {"latents": [[0.0] * 16], "model": "cvae"}, None, 400, "labels"),
    ("/generate", {"model": "vae", "latents": [[0.0] * 2]}, None, 400, "latents"),
    # values
    ("/denoise", {"images": [[0.1, "NaN"]]}, None, 400, "images"),
    ("/denoise", b'{"images": [[0.1, 1e999]]}', JSON, 400, "images"),
    ("/denoise", b'{"images": [[0.1, NaN]]}', JSON, 400, "images"),
    ("/denoise", b'{"images": [[0.1, -Infinity]]}', JSON, 400, "images"),
    ("/denoise", {"images": [[0.1, -0.1]]}, None, 400, "images"),
    ("/denoise", {"images": [[0.1, 1.5]]}, None, 400, "images"),
    ("/denoise", {"images": [["a", "b"]]}, None, 400, "images"),
    ("/denoise", {"images": []}, None, 400, "images"),
    ("/denoise", {"images": None}, None, 400, "images"),
    # names
    ("/encode", {"images": [IMG], "model": "gan"}, None, 400, "model"),
    ("/encode", {"images": [IMG], "dataset": "cifar10"}, None, 404, "dataset"),
    ("/generate", {"model": "ae"}, None, 400, "model"),
    ("/upscale", {"images": [IMG], "factor": 3}, None, 400, "factor"),
    ("/upscale", {"images": [IMG], "factor": "2"}, None, 400, "factor"),
    ("/encode", {"images": [IMG], "format": "png"}, None, 400, "format"),
    ("/encode", {"images": [IMG], "imgs": 1}, None, 400, "imgs"),
    ("/generate", {"temperature": -1}, None, 400, "temperature"),
    ("/generate", {"seed": -5}, None, 400, "seed"),
    ("/generate", {"model": "cvae", "label": 10}, None, 400, "label"),
    # limits (the test server: batch 256, n 64, side 64, 1 Mpixel out, 4 MiB bodies)
    ("/encode", {"images": np.zeros((257, 784)).tolist()}, None, 413, "images"),
    ("/denoise", {"images": np.zeros((65, 10)).tolist()}, None, 413, "images"),
    ("/upscale", {"images": np.zeros((80, 60, 60)).tolist(), "factor": 4}, None, 413, "images"),
    ("/generate", {"n": 65}, None, 413, "n"),
    ("/generate", {"n": 0}, None, 400, "n"),
    ("/generate", {"model": "vae2d", "grid": 9}, None, 413, "grid"),
    ("/denoise_file", codecs.npy_bytes(np.zeros((300, 8, 8), np.float32)), NPY, 413, "body"),
    ("/denoise_file", _png(65), PNG, 413, "body"),
    ("/denoise_file", b"\0" * (4 << 20 | 1), NPY, 413, "body"),
    # bodies and files
    ("/encode", b"", JSON, 400, "images"),
    ("/encode", b'{"images": [[0.1,', JSON, 400, None),
    ("/encode", b"[1, 2, 3]", JSON, 400, None),
    ("/denoise_file", b"", PNG, 400, "body"),
    ("/denoise_file", b"GIF89a....", PNG, 400, "body"),
    ("/denoise_file", _png(8)[:30], PNG, 400, "body"),
    ("/denoise_file", codecs.NPY_MAGIC + b"\x01\x00garbage", NPY, 400, "body"),
    ("/decode_file", _png(8), PNG, 400, "body"),
    ("/upscale_file?factor=3", _png(8), PNG, 400, "factor"),
    ("/encode_file?model=nope", _png(8), PNG, 400, "model"),
    ("/encode_file?dataset=cifar", _png(8), PNG, 404, "dataset"),
    # content types
    ("/encode", b'{"images": []}', {"Content-Type": "text/plain"}, 415, "content-type"),
    ("/encode", _png(8), PNG, 415, "content-type"),
    ("/denoise_file", b"{}", {"Content-Type": "application/json"}, 415, "content-type"),
    (
        "/encode",
        b"\x80\x04K\x01.",
        {"Content-Type": "application/vnd.bentoml+pickle"},
        415,
        "content-type",
    ),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "field"), CASES)
def test_bad_input(http, path, body, headers, status, field):
    if isinstance(body, dict):
        response = http.post(path, json=body, headers=headers)
    else:
        response = http.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    assert isinstance(error["error"], str) and error["error"]
    if field is not None:
        assert field in error["detail"][0]["loc"], error
        assert error["error"].startswith(f"{field}: "), error  # the one line names it too


def test_still_serving_after_the_matrix(server, http, digit_images):
    for case in CASES[:10]:  # a second helping, then the good requests
        path, body, headers = case[:3]
        kwargs = {"json": body} if isinstance(body, dict) else {"content": body}
        assert http.post(path, headers=headers, **kwargs).status_code < 500
    good = http.post("/encode", json={"images": digit_images[:4].tolist(), "model": "vae"})
    assert good.status_code == 200 and len(good.json()["latents"]) == 4
    assert http.post("/generate", json={"n": 2, "seed": 1}).status_code == 200
    assert http.get("/readyz").status_code == 200
    assert server.alive()
    log = server.log.read_text()
    assert " 500" not in log.replace("length=500", "") and "status=500" not in log
