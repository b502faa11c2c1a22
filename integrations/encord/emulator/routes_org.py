"""Organisation-level endpoints: cloud integrations and the client-metadata schema (v2 and deprecated v1)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .errors import bad_request
from .params import json_body, ok, qlist
from .runtime import emulator
from .state import now_iso

router = APIRouter(prefix="/v2/public")


@router.get("/cloud-integrations")
def cloud_integrations(request: Request) -> JSONResponse:
    uuids = set(qlist(request, "filterIntegrationUuids"))
    titles = set(qlist(request, "filterIntegrationTitles"))
    return ok(
        {
            "result": [
                {"integrationUuid": i.uuid, "title": i.title}
                for i in emulator(request).integrations
                if (not uuids or i.uuid in uuids) and (not titles or i.title in titles)
            ]
        }
    )


@router.get("/organisation/client-metadata-schema-v2")
def get_schema(request: Request) -> JSONResponse:
    emu = emulator(request)
    with emu.state.lock:
        return ok(emu.state.schema)


@router.post("/organisation/client-metadata-schema-v2")
async def save_schema(request: Request) -> Response:
    body = await json_body(request)
    if not isinstance(body, dict) or not all(isinstance(v, dict) and "ty" in v for v in body.values()):
        raise bad_request("Metadata schema must map keys to objects with a 'ty' field")
    emu = emulator(request)
    with emu.state.lock:
        emu.state.schema = body
    return Response(status_code=204)


@router.get("/organisation/client-metadata-schema")
def get_schema_v1(request: Request) -> JSONResponse:
    emu = emulator(request)
    with emu.state.lock:
        return ok(emu.state.schema_v1)


@router.post("/organisation/client-metadata-schema")
async def save_schema_v1(request: Request) -> Response:
    body = await json_body(request)
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        raise bad_request("Metadata schema (v1) must map keys to type names")
    emu = emulator(request)
    stamp = now_iso()
    with emu.state.lock:
        previous = emu.state.schema_v1
        emu.state.schema_v1 = {
            "uuid": previous["uuid"] if previous else "00000000-0000-4000-8000-000000000001",
            "metadataSchema": body,
            "organisationId": 1,
            "createdAt": previous["createdAt"] if previous else stamp,
            "updatedAt": stamp,
        }
    return Response(status_code=204)
