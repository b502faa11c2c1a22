"""Query-string and paging helpers: the SDK sends booleans as "True"/"False" and lists as repeated keys."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse

from .errors import bad_request

T = TypeVar("T")


def qbool(request: Request, name: str, default: bool | None = None) -> bool | None:
    value = request.query_params.get(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise bad_request(f"Query parameter '{name}' must be a boolean, got {value!r}")


def qint(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    try:
        return int(float(value))
    except ValueError as exc:
        raise bad_request(f"Query parameter '{name}' must be an integer, got {value!r}") from exc


def qlist(request: Request, name: str) -> list[str]:
    return request.query_params.getlist(name)


def page_bounds(request: Request, total: int) -> tuple[int, int, str | None]:
    """Offset-based paging: returns (start, stop, next page token or None)."""
    size = qint(request, "pageSize", 100)
    if not 1 <= size <= 1000:
        raise bad_request("pageSize must be between 1 and 1000")
    token = request.query_params.get("pageToken")
    try:
        start = int(token) if token else 0
    except ValueError as exc:
        raise bad_request(f"Invalid pageToken {token!r}") from exc
    stop = min(start + size, total)
    return start, stop, (str(stop) if stop < total else None)


def page(results: Sequence[Any], next_token: str | None) -> dict[str, Any]:
    return {"results": list(results), "nextPageToken": next_token}


async def json_body(request: Request) -> Any:
    """Parse the body as JSON, turning garbage into a 400 instead of a 500."""
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}") from exc


def ok(body: Any) -> JSONResponse:
    """Serialise with json.dumps directly; FastAPI's response-model encoding is slow for 100k-item pages."""
    return JSONResponse(body)
