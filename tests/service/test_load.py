"""A short concurrent burst of single-image requests: zero errors, right answers, batched."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration
REQUESTS, CONCURRENCY = 64, 16


def _batching(url: str) -> dict[str, float]:
    """Requests and onnxruntime calls so far for mnist/vae/encoder, from /metrics."""
    metrics = httpx.get(f"{url}/metrics").text
    pattern = (
        r'ae_batch_requests_(sum|count)\{dataset="mnist",model="vae",role="encoder"[^}]*\} (\S+)'
    )
    found = {kind: float(value) for kind, value in re.findall(pattern, metrics)}
    return {"requests": found.get("sum", 0.0), "calls": found.get("count", 0.0)}


def test_burst_of_single_images(server, reference, digit_images):
    def one(i: int) -> tuple[int, np.ndarray | None]:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = {"images": digit_images[i].tolist(), "model": "vae"}
            response = client.post("/encode", json=body)
            ok = response.status_code == 200
            return response.status_code, np.asarray(response.json()["latents"]) if ok else None

    before = _batching(server.url)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    statuses = [status for status, _ in results]
    assert statuses == [200] * REQUESTS  # in particular, no 503 for requests that waited
    latents = np.concatenate([latent for _, latent in results])
    expected = reference.run("mnist", "vae", "encoder", digit_images[:REQUESTS, None])[0]
    np.testing.assert_allclose(latents, expected, atol=1e-5)

    after = _batching(server.url)
    requests = after["requests"] - before["requests"]
    calls = after["calls"] - before["calls"]
    assert requests == REQUESTS and 1 <= calls <= REQUESTS
    print(f"batching: {requests:.0f} requests in {calls:.0f} onnxruntime calls")
