"""Project/ontology stubs (needed by ``get_project``) and Active sync/import calls, recorded as resyncs."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .errors import ApiError
from .params import json_body, ok
from .runtime import emulator
from .state import now_iso

router = APIRouter(prefix="/v2/public")
_EMPTY_ONTOLOGY = {"objects": [], "classifications": []}


def _project_uuid(project_hash: str) -> str:
    try:
        return str(uuid.UUID(project_hash))
    except ValueError:
        raise ApiError(404, f"Project {project_hash} not found") from None


@router.get("/projects/{project_hash}")
def get_project(project_hash: str) -> JSONResponse:
    """Any UUID is a project: the emulator invents a minimal workflow project for it."""
    project_id = _project_uuid(project_hash)
    stamp = now_iso()
    return ok(
        {
            "projectHash": project_id,
            "projectType": "workflow",
            "status": "inProgress",
            "title": f"Emulated project {project_id[:8]}",
            "description": "",
            "createdAt": stamp,
            "creatorEmail": "emulator@encord.local",
            "lastEditedAt": stamp,
            "ontologyHash": str(uuid.uuid5(uuid.NAMESPACE_OID, project_id)),
            "editorOntology": _EMPTY_ONTOLOGY,
            "userRole": 0,
        }
    )


@router.get("/ontologies/{ontology_hash}")
def get_ontology(ontology_hash: str) -> JSONResponse:
    stamp = now_iso()
    return ok(
        {
            "ontologyUuid": _project_uuid(ontology_hash),
            "title": "Emulated ontology",
            "description": "",
            "editor": _EMPTY_ONTOLOGY,
            "createdAt": stamp,
            "lastEditedAt": stamp,
            "userRole": 0,
        }
    )


@router.post("/active/{project_hash}/sync")
def active_sync(project_hash: str, request: Request) -> Response:
    emu = emulator(request)
    with emu.state.lock:
        emu.state.resyncs.append({"project": project_hash, "at": now_iso(), "kind": "sync"})
    return Response(status_code=204)


@router.post("/active/{project_hash}/import")
async def active_import(project_hash: str, request: Request) -> Response:
    body = await json_body(request)
    emu = emulator(request)
    entry = {"project": project_hash, "at": now_iso(), "kind": "import"}
    if isinstance(body, dict):
        entry["mode"] = body.get("projectMode")
    with emu.state.lock:
        emu.state.resyncs.append(entry)
    return Response(status_code=204)
