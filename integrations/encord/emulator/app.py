"""FastAPI application factory wiring state, worker, routes and the auth/fault gate together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from . import routes_control, routes_org, routes_projects, routes_storage, routes_uploads
from .config import EmulatorConfig
from .errors import ApiError, api_error_handler, not_found_handler
from .middleware import API_PREFIX, ApiGate
from .runtime import Emulator
from .state import NotFound


def create_app(config: EmulatorConfig | None = None) -> FastAPI:
    """Build an emulator app; the upload worker runs for the lifetime of the ASGI lifespan."""
    emu = Emulator.build(config or EmulatorConfig())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        emu.worker.start()
        try:
            yield
        finally:
            emu.worker.stop()

    app = FastAPI(title="Encord API emulator", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = emu
    modules = (routes_org, routes_storage, routes_uploads, routes_projects, routes_control)
    for module in modules:
        app.include_router(module.router)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(NotFound, not_found_handler)
    # Match against the routers' own routes: FastAPI wraps included routers in private types.
    api_routes = [route for module in modules for route in module.router.routes if isinstance(route, APIRoute)]

    def route_key(scope: Scope) -> str:
        """'METHOD template' for request counting, e.g. 'POST storage/folders/{id}/data-upload-jobs'."""
        path = scope["path"]
        for route in api_routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                path = route.path
                break
        return f"{scope['method']} {path.removeprefix(API_PREFIX)}"

    app.add_middleware(ApiGate, emu=emu, route_key=route_key)
    return app
