"""ASGI gate in front of /v2/public/*: counts the request, verifies the signature, then maybe injects a fault.

All three happen before the route runs, so a faulted request never has an effect. /_emulator/* bypasses it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import AuthError
from .runtime import Emulator

API_PREFIX = "/v2/public/"
_FAULT_STATUS = {"429": 429, "500": 500, "502": 502, "503": 503, "timeout": 504}


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class ApiGate:
    """Pure ASGI middleware (no BaseHTTPMiddleware) so the body can be read once and replayed."""

    def __init__(self, app: ASGIApp, emu: Emulator, route_key: Callable[[Scope], str]) -> None:
        self.app = app
        self.emu = emu
        self.route_key = route_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        self.emu.state.count_request(self.route_key(scope))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        try:
            self.emu.verifier.verify(scope["method"], target, headers, body)
        except AuthError as exc:
            await _send_json(send, 401, {"message": str(exc)})
            return
        kind = self.emu.faults.request_fault()
        if kind == "slow":
            await asyncio.sleep(0.5)
        elif kind == "timeout":
            await asyncio.sleep(self.emu.faults.config.timeout_seconds)
        if kind is not None and kind != "slow":
            extra = {"Retry-After": "1"} if kind == "429" else None
            await _send_json(send, _FAULT_STATUS[kind], {"message": f"Emulated fault: {kind}"}, extra)
            return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
