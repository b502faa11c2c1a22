"""HTTP emulator of the Encord API, spoken to by the unmodified ``encord`` SDK (v2 REST, signed requests).

Use ``create_app(EmulatorConfig(...))`` for an ASGI app, ``serve``/``EmulatorServer`` to run it,
or ``main(argv)`` for the command line.
"""

from .app import create_app
from .cli import main
from .config import EmulatorConfig, FaultConfig
from .runtime import integration_uuid
from .server import EmulatorServer, serve

__all__ = [
    "EmulatorConfig",
    "EmulatorServer",
    "FaultConfig",
    "create_app",
    "integration_uuid",
    "main",
    "serve",
]
