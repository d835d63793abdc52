"""Every endpoint through a real `bentoml serve`, checked against direct onnxruntime runs."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from service import codecs

pytestmark = pytest.mark.integration
ATOL = 1e-5


def as_array(response: httpx.Response, key: str = "images") -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()[key], dtype=np.float32)


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(codecs.to_uint8(array)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("model", ["ae", "vae", "vae2d", "cvae"])
def test_encode_decode(http, reference, digit_images, model, dataset):
    images = digit_images[:6]
    labels = [0, 1, 2, 3, 4, 5] if model == "cvae" else None
    extra = (np.asarray(labels, np.int64),) if labels else ()
    body = {"images": images.tolist(), "model": model, "dataset": dataset}
    if labels:
        body["labels"] = labels
    response = http.post("/encode", json=body)
    expected = reference.run(dataset, model, "encoder", images[:, None], *extra)
    np.testing.assert_allclose(as_array(response, "latents"), expected[0], atol=ATOL)
    if model == "ae":
        assert "logvar" not in response.json()
    else:
        np.testing.assert_allclose(as_array(response, "logvar"), expected[1], atol=ATOL)

    latents = expected[0]
    body = {"latents": latents.tolist(), "model": model, "dataset": dataset, "labels": labels}
    decoded = as_array(http.post("/decode", json=body))
    image = reference.run(dataset, model, "decoder", latents, *extra)[0]  # `image`, not logits
    np.testing.assert_allclose(decoded, image[:, 0], atol=ATOL)


def test_image_layouts_agree(http, digit_images):
    one = digit_images[0]
    a = as_array(http.post("/encode", json={"images": [one.tolist()]}), "latents")
    b = as_array(http.post("/encode", json={"images": one.tolist()}), "latents")
    c = as_array(http.post("/encode", json={"images": [one.ravel().tolist()]}), "latents")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_denoise_any_size(http, reference, digit_images):
    noisy = np.clip(digit_images[:3, :20, :24] + 0.2, 0, 1)
    out = as_array(http.post("/denoise", json={"images": noisy.tolist()}))
    expected = reference.run("mnist", "denoiser", "model", noisy[:, None])[0][:, 0]
    assert out.shape == (3, 20, 24)
    np.testing.assert_allclose(out, expected, atol=ATOL)


@pytest.mark.parametrize("factor", [2, 4])
def test_upscale(http, reference, digit_images, factor):
    small = digit_images[:2, ::2, ::2]
    body = {"images": small.tolist(), "factor": factor, "dataset": "fashion-mnist"}
    out = as_array(http.post("/upscale", json=body))
    expected = reference.run("fashion-mnist", f"upscaler_x{factor}", "model", small[:, None])[0]
    assert out.shape == (2, 14 * factor, 14 * factor)
    np.testing.assert_allclose(out, expected[:, 0], atol=ATOL)


def test_generate(http, reference):
    first = http.post("/generate", json={"n": 4, "seed": 11, "temperature": 0.7}).json()
    again = http.post("/generate", json={"n": 4, "seed": 11, "temperature": 0.7}).json()
    assert first == again and first["seed"] == 11
    z = (np.random.default_rng(11).standard_normal((4, 16)) * 0.7).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(first["latents"], np.float32), z)
    expected = reference.run("mnist", "vae", "decoder", z)[0][:, 0]
    np.testing.assert_allclose(np.asarray(first["images"], np.float32), expected, atol=ATOL)
    random = http.post("/generate", json={"n": 1}).json()
    assert isinstance(random["seed"], int)

    cvae = http.post("/generate", json={"model": "cvae", "n": 3, "seed": 0, "label": 7}).json()
    assert cvae["labels"] == [7, 7, 7]
    grid = http.post("/generate", json={"model": "vae2d", "grid": 5})
    assert as_array(grid).shape == (25, 28, 28)
    given = [[0.5, -1.0], [0.0, 0.0]]
    explicit = as_array(http.post("/generate", json={"model": "vae2d", "latents": given}))
    expected = reference.run("mnist", "vae2d", "decoder", np.asarray(given, np.float32))[0]
    np.testing.assert_allclose(explicit, expected[:, 0], atol=ATOL)


def test_png_out_by_field_and_accept(http, digit_images):
    latents = http.post("/encode", json={"images": digit_images[:1].tolist()}).json()["latents"]
    json_image = as_array(http.post("/decode", json={"latents": latents}))[0]
    by_field = http.post("/decode", json={"latents": latents, "format": "png"})
    by_accept = http.post("/decode", json={"latents": latents}, headers={"Accept": "image/png"})
    for response in (by_field, by_accept):
        assert response.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        np.testing.assert_array_equal(pixels, codecs.to_uint8(json_image))
    grid = http.post("/generate", json={"model": "vae2d", "grid": 4, "format": "png"})
    assert Image.open(io.BytesIO(grid.content)).size == (4 * 30 + 2, 4 * 30 + 2)


def test_npy_binary_path(http, digit_images):
    images = digit_images[:32]
    headers = {"Content-Type": "application/x-npy"}
    response = http.post(
        "/encode_file?model=vae", content=codecs.npy_bytes(images), headers=headers
    )
    assert response.headers["content-type"] == "application/x-npy"
    latents = codecs.read_npy(response.content, images=False)
    by_json = as_array(
        http.post("/encode", json={"images": images.tolist(), "model": "vae"}), "latents"
    )
    np.testing.assert_allclose(latents, by_json, atol=ATOL)

    response = http.post(
        "/decode_file?model=vae", content=codecs.npy_bytes(latents), headers=headers
    )
    decoded = codecs.read_npy(response.content, images=True)
    assert decoded.shape == (32, 28, 28)
    as_uint8 = codecs.npy_bytes(codecs.to_uint8(images))
    denoised = http.post("/denoise_file", content=as_uint8, headers=headers)
    assert codecs.read_npy(denoised.content, images=True).shape == (32, 28, 28)
    as_json = http.post("/upscale_file?factor=2&format=json", content=as_uint8, headers=headers)
    assert as_array(as_json).shape == (32, 56, 56)
    accept = http.post(
        "/denoise", json={"images": images[:2].tolist()}, headers={"Accept": "application/x-npy"}
    )
    assert codecs.read_npy(accept.content, images=True).shape == (2, 28, 28)


def test_image_files(http, reference, digit_images):
    big = np.kron(digit_images[0], np.ones((2, 2), np.float32))  # 56x56 -> resized for encode
    headers = {"Content-Type": "image/png"}
    response = http.post("/encode_file?model=ae", content=png_of(big), headers=headers)
    resized = codecs.read_image(png_of(big), max_side=64, size=28)
    expected = reference.run("mnist", "ae", "encoder", resized[None, None])[0]
    np.testing.assert_allclose(as_array(response, "latents"), expected, atol=ATOL)

    jpeg = io.BytesIO()
    Image.fromarray(codecs.to_uint8(digit_images[1])).convert("RGB").save(jpeg, format="JPEG")
    labelled = http.post(
        "/encode_file?model=cvae&labels=3",
        content=jpeg.getvalue(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert as_array(labelled, "latents").shape == (1, 16)

    denoised = http.post(
        "/denoise_file", content=png_of(digit_images[2][:20, :25]), headers=headers
    )
    assert denoised.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(denoised.content)).size == (25, 20)
    upscaled = http.post("/upscale_file?factor=4", content=png_of(digit_images[3]), headers=headers)
    assert Image.open(io.BytesIO(upscaled.content)).size == (112, 112)


def test_models_is_the_manifest(http, reference):
    served = http.post("/models").json()
    assert http.get("/models").json() == served
    limits = served.pop("limits")
    assert limits["max_batch"] == 256 and limits["max_n"] == 64
    assert served == reference.manifest.model_dump(mode="json")


def test_bentoml_client(server, digit_images, tmp_path):
    import bentoml

    with bentoml.SyncHTTPClient(server.url, timeout=60) as client:
        out = client.encode(images=digit_images[:2].tolist(), model="vae")
        assert np.asarray(out["latents"]).shape == (2, 16)
        generated = client.generate(n=2, seed=3)
        assert np.asarray(generated["images"]).shape == (2, 28, 28)
        assert client.models()["limits"]["max_n"] == 64
        path = client.denoise_file(png_of(digit_images[0]))
        assert Image.open(path).size == (28, 28)


def test_probes_docs_and_metrics(http):
    for probe in ("/healthz", "/livez", "/readyz"):
        assert http.get(probe).status_code == 200
    spec = http.get("/docs.json").json()
    for route in (
        "/encode",
        "/decode",
        "/denoise",
        "/upscale",
        "/generate",
        "/models",
        "/encode_file",
        "/decode_file",
        "/denoise_file",
        "/upscale_file",
    ):
        assert route in spec["paths"], route
    schemas = spec["components"]["schemas"]
    generate = next(v for k, v in schemas.items() if k.startswith("GenerateRequest"))
    assert {"n", "seed", "temperature", "model", "dataset", "label", "grid"} <= set(
        generate["properties"]
    )
    assert http.get("/").status_code == 200
    metrics = http.get("/metrics").text
    assert "ae_batch_requests" in metrics and "bentoml_service_request" in metrics
