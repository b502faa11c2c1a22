"""/_emulator/* control routes for tests and operators: state dump, faults, reset. No auth, no faults."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .config import FaultConfig
from .errors import ApiError, bad_request
from .params import json_body, ok
from .runtime import emulator
from .wire import item_state_json, job_state_json

router = APIRouter(prefix="/_emulator")


@router.get("/state")
def get_state(request: Request) -> JSONResponse:
    emu = emulator(request)
    state = emu.state
    with state.lock:
        body = {
            "folders": [
                {"uuid": f.uuid, "name": f.name, "parent": f.parent, "client_metadata": f.client_metadata}
                for f in state.folders.values()
            ],
            "items": [item_state_json(i) for i in state.items.values()],
            "schema": state.schema,
            "uploads": [job_state_json(j) for j in state.jobs.values()],
            "resyncs": list(state.resyncs),
            "requests": dict(state.requests),
            "metadata_updates": state.metadata_updates,
            "faults": emu.faults.config.to_dict(),
            "faults_injected": emu.faults.injected(),
            "integrations": [dataclasses.asdict(i) for i in emu.integrations],
        }
    return ok(body)


@router.get("/counters")
def get_counters(request: Request) -> JSONResponse:
    """The request and metadata-update counters without the item dump (cheap at any size)."""
    state = emulator(request).state
    with state.lock:
        body = {
            "items": len(state.items),
            "requests": dict(state.requests),
            "metadata_updates": state.metadata_updates,
        }
    return ok(body)


@router.get("/faults")
def get_faults(request: Request) -> dict[str, Any]:
    return emulator(request).faults.config.to_dict()


def _fault_config(body: Any, current: FaultConfig) -> FaultConfig:
    if not isinstance(body, dict):
        raise bad_request("Fault config must be a JSON object")
    kinds = body.get("kinds", [])
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    try:
        return FaultConfig(
            rate=float(body.get("rate", 0.0)),
            kinds=[str(k) for k in kinds],
            seed=body.get("seed"),
            timeout_seconds=float(body.get("timeout_seconds", current.timeout_seconds)),
            max_faults=body.get("max_faults"),
        )
    except (TypeError, ValueError) as exc:
        raise bad_request(str(exc)) from exc


@router.post("/faults")
async def set_faults(request: Request) -> dict[str, Any]:
    """Replace the fault config (missing timeout_seconds keeps the current value)."""
    emu = emulator(request)
    config = _fault_config(await json_body(request), emu.faults.config)
    emu.faults.replace(config)
    return config.to_dict()


@router.post("/reset")
def reset(request: Request) -> dict[str, Any]:
    """Forget folders, items, uploads, schema, resyncs and request counts; keep integrations, keys, faults."""
    emulator(request).state.reset()
    return {"ok": True}


@router.get("/items/{item_id}/client-metadata")
def item_metadata(item_id: str, request: Request) -> JSONResponse:
    """Target of the 'signed URL' handed out when list_items(resolve_client_metadata_locally=True)."""
    emu = emulator(request)
    with emu.state.lock:
        item = emu.state.items.get(item_id)
        if item is None:
            raise ApiError(404, f"Item {item_id} not found")
        return JSONResponse(item.client_metadata)


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
