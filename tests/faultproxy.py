"""A TCP proxy on 127.0.0.1 that delays, resets, or answers for the server behind it.

Put between the pipeline and moto, it produces what real networks and clouds do mid-run:
connection resets, slow reads, and credentials that expire. Faults are decided per request
chunk the client sends, so keep-alive connections are hit too.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

EXPIRED = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
EXPIRED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ExpiredToken</Code>'
    b"<Message>The provided token has expired.</Message></Error>"
)


@dataclass
class Faults:
    reset_rate: float = 0.0  # chance that a client chunk kills the connection
    reset_match: bytes = b""  # only chunks containing this are eligible (e.g. b"list-type=2")
    reset_first: int = 0  # reset the first N eligible chunks for sure (then `reset_rate` applies)
    delay: float = 0.0  # seconds added before forwarding each client chunk
    expired: bool = False  # answer every request with S3's ExpiredToken
    expire_after: int | None = None  # switch `expired` on after this many client chunks
    seed: int = 1
    chunks: int = 0
    resets: int = 0
    rng: random.Random = field(default_factory=random.Random)


class FaultProxy:
    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("http://").partition(":")
        self.target = (host, int(port))
        self.faults = Faults()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._loop, daemon=True)
        self._accept.start()

    def configure(self, **changes: object) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self.faults, name, value)
            self.faults.rng = random.Random(self.faults.seed)

    def _loop(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()
            self._threads.append(t)

    def _decide(self, chunk: bytes) -> str:
        with self._lock:
            f = self.faults
            f.chunks += 1
            if f.expire_after is not None and f.chunks > f.expire_after:
                f.expired = True
            if f.expired:
                return "expired"
            eligible = not f.reset_match or f.reset_match in chunk
            if eligible and f.reset_first > 0:
                f.reset_first -= 1
                f.resets += 1
                return "reset"
            if eligible and f.reset_rate and f.rng.random() < f.reset_rate:
                f.resets += 1
                return "reset"
            return "delay" if f.delay else "pass"

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            self._reset(client)
            return
        socks = [client, upstream]
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select(socks, [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        fate = self._decide(data)
                        if fate == "reset":
                            self._reset(client)
                            return
                        if fate == "expired":
                            client.sendall(EXPIRED % (len(EXPIRED_BODY), EXPIRED_BODY))
                            return
                        if fate == "delay":
                            time.sleep(self.faults.delay)
                        upstream.sendall(data)
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.close()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
