"""Encord-style error responses: a JSON body with ``message``, which the SDK maps to its exception types."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from .state import NotFound


class ApiError(Exception):
    """Abort the request with an HTTP status and an Encord-like message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message)


async def not_found_handler(_: Request, exc: Exception) -> JSONResponse:
    return error_response(404, f"Resource not found: {exc}")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def no_access(what: str, ident: str) -> ApiError:
    """Encord reports unknown folders/items as 403 (SDK: AuthorisationError), not 404."""
    return ApiError(403, f"You are not authorised to access this asset or it does not exist: {what} {ident}")


__all__ = ["ApiError", "NotFound", "api_error_handler", "bad_request", "error_response", "no_access"]
