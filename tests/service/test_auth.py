"""API key on: every endpoint but the probes needs the bearer token (the key-off case is
everything else in this folder)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration
KEY = "test-key-0123456789abcdef"  # the keyed_server fixture's key


def test_key_required(keyed_server):
    good = {"Authorization": f"Bearer {KEY}"}
    with keyed_server.client() as http:
        for path in ("/generate", "/models", "/encode", "/denoise_file"):
            response = http.post(path, json={})
            assert response.status_code == 401, path
            assert response.json()["detail"][0]["loc"] == ["authorization"]
        for header in (
            f"Bearer {KEY}x",
            f"Bearer {KEY[:-1]}",
            f"Basic {KEY}",
            KEY,
            "Bearer",
            f"bearer{KEY}",
        ):
            assert (
                http.post("/generate", json={}, headers={"Authorization": header}).status_code
                == 401
            )
        assert http.get("/docs.json").status_code == 401
        assert http.get("/models").status_code == 401
        assert http.get("/models", headers=good).status_code == 200
        assert http.post("/generate", json={"n": 1}, headers=good).status_code == 200
        for probe in ("/healthz", "/livez", "/readyz", "/metrics"):
            assert http.get(probe).status_code == 200, probe


def test_bentoml_client_with_token(keyed_server):
    import bentoml

    with bentoml.SyncHTTPClient(keyed_server.url, token=KEY, timeout=60) as client:
        assert len(client.generate(n=2, seed=0)["images"]) == 2
