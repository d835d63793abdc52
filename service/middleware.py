"""The gate in front of the API: API key, content type and body size, before any parsing.

A pure ASGI middleware (no body is read unless it has to be counted):

- API key: when configured, every path but the probes (`/healthz`, `/livez`,
  `/readyz`, `/metrics`) needs `Authorization: Bearer <key>`, compared in
  constant time (`hmac.compare_digest`); else 401.
- Body size: a `Content-Length` over the limit is answered 413 at once; a
  chunked body is buffered only up to the limit, then refused with 413.
- Content type, per API route: JSON routes take `application/json`; `_file`
  routes take the file itself (`image/png`, `image/jpeg`, `application/x-npy`,
  `application/octet-stream`). curl's default for `-d`/`--data-binary`
  (`application/x-www-form-urlencoded`) is taken to mean "unspecified". Any
  other type, BentoML's pickle format included, gets 415, so nothing a client
  sends is ever unpickled.

Errors are JSON in the same shape as every other 4xx (`service.errors`). BentoML's
own 400s for requests that fail pydantic validation get their one-line `error`
rewritten from "1 validation error for EncodeRequestIODescriptor" to the field and
the problem ("factor: Input should be 2 or 4").
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
UNSPECIFIED = frozenset({"", "application/x-www-form-urlencoded"})
FILE_TYPES = frozenset(
    {"image/png", "image/jpeg", "application/x-npy", "application/octet-stream", "text/plain"}
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _error(status: int, field: str, message: str, kind: str) -> bytes:
    return orjson.dumps(
        {"error": f"{field}: {message}", "detail": [{"loc": [field], "msg": message, "type": kind}]}
    )


class GateMiddleware:
    """See the module docstring. `routes` maps an API path to "json" or "file"."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: dict[str, str],
        max_body: int,
        api_key: str | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.max_body = max_body
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}

        if self.api_key is not None and not self._authorized(headers.get("authorization", b"")):
            body = _error(401, "authorization", "missing or wrong API key (Bearer)", "unauthorized")
            return await _respond(send, 401, body, [(b"www-authenticate", b'Bearer realm="api"')])

        kind = self.routes.get(scope["path"])
        if kind is not None and scope["method"] == "POST":
            media = headers.get("content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if kind == "json" and media not in UNSPECIFIED | {"application/json"}:
                return await _respond(
                    send,
                    415,
                    _error(
                        415,
                        "content-type",
                        f"{media!r}: this endpoint takes application/json "
                        "(files go to the *_file endpoints)",
                        "unsupported_media_type",
                    ),
                )
            if kind == "file" and media not in UNSPECIFIED | FILE_TYPES:
                return await _respond(
                    send,
                    415,
                    _error(
                        415,
                        "content-type",
                        f"{media!r}: send the file itself as the body, "
                        "as image/png, image/jpeg or application/x-npy",
                        "unsupported_media_type",
                    ),
                )
            # One canonical type per kind: BentoML never picks its form or pickle parsers.
            canonical = b"application/json" if kind == "json" else b"application/octet-stream"
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope["headers"].append((b"content-type", canonical))
            send = _clarifying(send)

        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                too_big = False  # the HTTP server rejects malformed lengths itself
            if too_big:
                return await self._too_large(send, int(length))
        elif scope["method"] in BODY_METHODS:
            receive = await self._buffer(receive, send)
            if receive is None:
                return None
        return await self.app(scope, receive, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(token.strip(), self.api_key or b"")

    async def _too_large(self, send: Send, size: int | None) -> None:
        said = f"{size} bytes" if size is not None else "the body"
        message = f"{said} is over the limit of {self.max_body} bytes; send fewer images a request"
        await _respond(send, 413, _error(413, "body", message, "too_large"))

    async def _buffer(self, receive: Receive, send: Send) -> Receive | None:
        """Read a body of unknown length up to the limit; None once 413 has been sent."""
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                await self._too_large(send, None)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return replay


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def clarify_validation_error(body: bytes) -> bytes:
    """BentoML's pydantic 400 -> our error shape, with `error` naming the fields."""
    try:
        data = orjson.loads(body)
        details = data["detail"]
        if "validation error" not in data["error"] or not isinstance(details, list):
            return body
        clean = []
        for item in details:
            loc = [str(part) for part in item.get("loc") or []] or ["body"]
            clean.append({"loc": loc, "msg": item["msg"], "type": item.get("type", "invalid")})
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return body
    message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in clean)
    return orjson.dumps({"error": message, "detail": clean})


def _clarifying(send: Send) -> Send:
    """Wrap `send` so that 400 answers pass through `clarify_validation_error`."""
    held: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 400:
            held["start"] = message
            return None
        if message["type"] != "http.response.body" or "start" not in held:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        body = clarify_validation_error(b"".join(chunks))
        start = held.pop("start")
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        return await send({"type": "http.response.body", "body": body})

    return wrapped
