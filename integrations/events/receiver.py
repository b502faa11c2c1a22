"""The HTTP endpoint buckets notify: `POST /events`, answered once Prefect has the event.

Checks, cheapest first: path (404), method (405), any credentials at all (401), length (411/413),
content type (415), token or body signature (403), JSON shape (400). A notification is answered
200 only after its keys were emitted, and 503 if Prefect did not take them, so S3/SNS, Pub/Sub
and Event Grid retry on their own. Logs never carry secrets: the query string (which may hold
`token=`) is left out of the access log.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from integrations.events.auth import Authenticator, Verdict
from integrations.events.batcher import Batcher
from integrations.events.emit import BucketRef
from integrations.events.notifications import MalformedNotification, ObjectCreated, Parsed, parse_text

log = logging.getLogger("encord_ingest.events")

PATH = "/events"
DEFAULT_MAX_BODY = 2 * 1024 * 1024
_JSON_TYPES = ("application/json", "text/plain", "application/cloudevents+json", "application/cloudevents-batch+json")
_DRAIN_LIMIT = 16 * 1024 * 1024


@dataclass
class ReceiverConfig:
    max_body: int = DEFAULT_MAX_BODY
    accept_timeout: float = 30.0
    allowed_origins: tuple[str, ...] = ("eventgrid.azure.net",)
    counters: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def group_by_bucket(objects: list[ObjectCreated]) -> dict[BucketRef, list[str]]:
    grouped: dict[BucketRef, list[str]] = {}
    for obj in objects:
        grouped.setdefault(BucketRef(obj.scheme, obj.bucket, obj.account), []).append(obj.key)
    return grouped


def submit(batcher: Batcher, parsed: Parsed) -> list[Future[int]]:
    futures: list[Future[int]] = []
    for ref, keys in group_by_bucket(parsed.objects).items():
        futures.extend(batcher.add(ref, keys))
    return futures


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds of socket silence before a slow client is dropped
    server_version = "encord-ingest-receiver"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Access log without the query string (it may carry ?token=)."""
        log.debug("%s %s %s", self.client_address[0], self.command, urlsplit(self.path).path)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.server.config.counters[str(status)] += 1

    def _error(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        self._drain()
        self._send(status, {"error": status.phrase, "status": int(status), "detail": message}, headers)

    def _drain(self) -> None:
        """Read an unread body (bounded) so the client sees our answer instead of a reset."""
        if getattr(self, "_body_read", False):
            return
        self._body_read = True
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= _DRAIN_LIMIT:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def do_GET(self) -> None:
        self._body_read = True
        if urlsplit(self.path).path == "/healthz":
            self._send(HTTPStatus.OK, {"ok": True})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"only POST {PATH} and GET /healthz exist")

    def do_OPTIONS(self) -> None:
        """CloudEvents webhook validation (Event Grid with the CloudEvents schema)."""
        self._body_read = True
        origin = (self.headers.get("WebHook-Request-Origin") or "").strip().lower()
        allowed = self.server.config.allowed_origins
        if urlsplit(self.path).path != PATH or not origin:
            self._error(HTTPStatus.BAD_REQUEST, "OPTIONS is only the CloudEvents handshake (WebHook-Request-Origin)")
        elif "*" in allowed or origin in allowed:
            self._send(HTTPStatus.OK, {}, {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"})
        else:
            self._error(HTTPStatus.FORBIDDEN, "origin not allowed")

    def do_PUT(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"use POST {PATH}", {"Allow": "POST, OPTIONS"})

    do_DELETE = do_PATCH = do_PUT

    def do_POST(self) -> None:
        self._body_read = False
        url = urlsplit(self.path)
        if url.path != PATH:
            self._error(HTTPStatus.NOT_FOUND, f"notifications go to POST {PATH}")
            return
        auth = self.server.auth
        query_token = (parse_qs(url.query).get("token") or [None])[0]
        if not auth.has_credentials(self.headers, query_token):
            self._error(
                HTTPStatus.UNAUTHORIZED,
                "missing credentials: send X-Ingest-Token, Authorization (Bearer/Basic), ?token= or X-Ingest-Signature",
                {"WWW-Authenticate": 'Bearer realm="encord-ingest"'},
            )
            return
        token_verdict = auth.check_tokens(self.headers, query_token)
        if token_verdict is Verdict.WRONG:
            self._error(HTTPStatus.FORBIDDEN, "credentials rejected")
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return
        length = int(length_header)
        limit = self.server.config.max_body
        if length > limit:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over the {limit}-byte limit")
            return
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON (application/json, text/plain from SNS)")
            return
        body = self.rfile.read(length)
        self._body_read = True
        if token_verdict is not Verdict.OK and auth.check_signature(self.headers, body) is not Verdict.OK:
            self._error(HTTPStatus.FORBIDDEN, "signature does not match the body")
            return
        try:
            parsed = parse_text(body)
        except MalformedNotification as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._accept(parsed)

    def _accept(self, parsed: Parsed) -> None:
        if parsed.reply is not None and not parsed.objects:
            if parsed.reply.get("status") == "sns-subscription-confirmation":
                log.warning("SNS subscription to %s awaits confirmation (aws sns confirm-subscription)", parsed.reply)
            self._send(HTTPStatus.OK, parsed.reply)
            return
        futures = submit(self.server.batcher, parsed)
        done, pending = wait_futures(futures, timeout=self.server.config.accept_timeout)
        try:
            failed = [f for f in done if f.exception(timeout=0) is not None]
        except FutureTimeout:  # pragma: no cover - done futures never time out
            failed = []
        if pending or failed:
            reason = "timed out" if pending else str(failed[0].exception())
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"Prefect did not accept the event ({reason}); retry later")
            return
        self._send(
            HTTPStatus.OK,
            {
                "accepted": len(parsed.objects),
                "ignored": parsed.ignored,
                "buckets": sorted({f"{o.scheme}://{o.bucket}" for o in parsed.objects}),
            },
        )


class ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], auth: Authenticator, batcher: Batcher, config: ReceiverConfig | None = None
    ) -> None:
        super().__init__(address, _Handler)
        self.auth = auth
        self.batcher = batcher
        self.config = config or ReceiverConfig()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class Receiver:
    """Runs a ReceiverServer on a background thread (tests, `python -m integrations.events http`)."""

    def __init__(
        self, auth: Authenticator, batcher: Batcher, host: str = "127.0.0.1", port: int = 0, **config: Any
    ) -> None:
        self.server = ReceiverServer((host, port), auth, batcher, ReceiverConfig(**config))
        self.batcher = batcher
        self._thread = threading.Thread(target=self.server.serve_forever, name="events-receiver", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.batcher.close()
        self._thread.join(timeout=10)
