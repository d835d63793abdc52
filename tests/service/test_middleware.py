"""The gate: API key, content types and body size, checked before the app sees a byte."""

from __future__ import annotations

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.middleware import GateMiddleware, clarify_validation_error


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"type": request.headers.get("content-type"), "size": len(body)})


def client(api_key: str | None = None, max_body: int = 100) -> TestClient:
    routes = [
        Route(p, echo, methods=["GET", "POST"]) for p in ("/encode", "/encode_file", "/readyz", "/")
    ]
    app = GateMiddleware(
        Starlette(routes=routes),
        routes={"/encode": "json", "/encode_file": "file"},
        max_body=max_body,
        api_key=api_key,
    )
    return TestClient(app)


def test_api_key():
    http = client(api_key="s3cret")
    assert http.post("/encode", json={}).status_code == 401
    wrong = http.post("/encode", json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert wrong.json()["detail"][0]["loc"] == ["authorization"]
    basic = http.post("/encode", json={}, headers={"Authorization": "Basic s3cret"})
    assert basic.status_code == 401
    assert (
        http.post("/encode", json={}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    )
    assert http.get("/", headers={"Authorization": "bearer s3cret"}).status_code == 200
    assert http.get("/").status_code == 401
    assert http.get("/readyz").status_code == 200  # probes stay open
    assert client().post("/encode", json={}).status_code == 200  # no key configured


@pytest.mark.parametrize(
    ("path", "content_type", "status", "seen"),
    [
        ("/encode", "application/json", 200, "application/json"),
        ("/encode", "application/json; charset=utf-8", 200, "application/json"),
        ("/encode", "application/x-www-form-urlencoded", 200, "application/json"),
        ("/encode", "text/plain", 415, None),
        ("/encode", "image/png", 415, None),
        ("/encode", "multipart/form-data; boundary=x", 415, None),
        ("/encode", "application/vnd.bentoml+pickle", 415, None),
        ("/encode_file", "image/png", 200, "application/octet-stream"),
        ("/encode_file", "application/x-npy", 200, "application/octet-stream"),
        ("/encode_file", "application/x-www-form-urlencoded", 200, "application/octet-stream"),
        ("/encode_file", "application/json", 415, None),
        ("/encode_file", "application/vnd.bentoml+pickle", 415, None),
    ],
)
def test_content_types(path, content_type, status, seen):
    response = client().post(path, content=b"{}", headers={"Content-Type": content_type})
    assert response.status_code == status
    if seen:
        assert response.json()["type"] == seen
    else:
        assert response.json()["detail"][0]["loc"] == ["content-type"]


def test_body_size():
    http = client(max_body=100)
    assert http.post("/encode", content=b"x" * 100).json()["size"] == 100
    too_big = http.post("/encode", content=b"x" * 101)
    assert too_big.status_code == 413 and too_big.json()["detail"][0]["loc"] == ["body"]

    def chunks(n):
        for _ in range(n):
            yield b"x" * 30

    assert http.post("/encode", content=chunks(3)).json()["size"] == 90  # chunked, under
    assert http.post("/encode", content=chunks(4)).status_code == 413  # chunked, over


def test_validation_errors_are_clarified():
    bentoml_400 = (
        b'{"error": "2 validation errors for EncodeRequestIODescriptor", "detail": ['
        b'{"type": "missing", "loc": ["images"], "msg": "Field required", "url": "u"},'
        b'{"type": "json_invalid", "loc": [], "msg": "Invalid JSON"}]}'
    )
    clear = orjson.loads(clarify_validation_error(bentoml_400))
    assert clear["error"] == "images: Field required; body: Invalid JSON"
    assert clear["detail"][1] == {"loc": ["body"], "msg": "Invalid JSON", "type": "json_invalid"}
    ours = b'{"error": "images: bad", "detail": []}'
    assert clarify_validation_error(ours) == ours
    assert clarify_validation_error(b"not json") == b"not json"
