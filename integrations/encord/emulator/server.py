"""Running the emulator with uvicorn: blocking ``serve`` (prints the ready line) and a threaded helper."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from types import TracebackType

import uvicorn

from .app import create_app
from .config import EmulatorConfig


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts so port 0 resolves to a real port we can announce."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn server that calls back once it is accepting connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()


def _uvicorn_config(config: EmulatorConfig, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(config),
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )


def serve(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
    """Serve until interrupted; prints one ``ready http://HOST:PORT`` line to stdout once accepting."""
    sock = bind_socket(host, port)
    url = base_url(host, sock.getsockname()[1])

    def announce() -> None:
        sys.stdout.write(f"ready {url}\n")
        sys.stdout.flush()

    _Server(_uvicorn_config(config, log_level), announce).run(sockets=[sock])


class EmulatorServer:
    """Emulator on a background thread (for tests and embedding): ``with EmulatorServer(cfg) as url: ...``."""

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = bind_socket(host, port)
        self.url = base_url(host, self._sock.getsockname()[1])
        self._ready = threading.Event()
        self._server = _Server(_uvicorn_config(config or EmulatorConfig(), "warning"), self._ready.set)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="encord-emulator", daemon=True
        )

    def start(self, timeout: float = 10.0) -> str:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("Encord emulator did not start in time")
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
