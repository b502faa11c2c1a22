"""Upload jobs: start (validates the manifest synchronously), long-poll the result, cancel."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .errors import ApiError, bad_request, no_access
from .manifest import ManifestError, parse_manifest
from .params import json_body, ok, qint
from .runtime import emulator
from .state import NotFound, UploadJob
from .wire import job_json

router = APIRouter(prefix="/v2/public")
_POLL_TICK = 0.05


@router.post("/storage/folders/{id}/data-upload-jobs")
async def start_upload(id: str, request: Request) -> JSONResponse:
    emu = emulator(request)
    try:
        emu.state.folder(id)
    except NotFound:
        raise no_access("folder", id) from None
    body = await json_body(request)
    if not isinstance(body, dict):
        raise bad_request("Upload job payload must be a JSON object")
    integration = body.get("integrationHash")
    if integration is not None and integration not in {i.uuid for i in emu.integrations}:
        raise bad_request(f"Unknown cloud integration: {integration}")
    files = body.get("externalFiles")
    items = body.get("dataItems")
    if (files is None) == (items is None):
        raise bad_request("Exactly one of 'externalFiles' and 'dataItems' must be given")
    try:
        manifest = await run_in_threadpool(parse_manifest, files if files is not None else items)
    except ManifestError as exc:
        raise bad_request(f"Invalid upload manifest: {exc}") from exc
    job = UploadJob(
        uuid=str(uuid.uuid4()),
        folder=id,
        integration=integration,
        ignore_errors=bool(body.get("ignoreErrors", False)),
        file_name=body.get("fileName"),
        manifest=manifest,
        not_before=time.monotonic() + emu.config.job_delay_seconds,
        pending=len(manifest.units),
    )
    emu.state.add_job(job)
    emu.worker.submit(job)
    return JSONResponse(job.uuid)


def _job(request: Request, folder_id: str, job_id: str) -> UploadJob:
    try:
        return emulator(request).state.job(folder_id, job_id)
    except NotFound:
        raise ApiError(404, f"Upload job {job_id} not found in folder {folder_id}") from None


@router.get("/storage/folders/{id}/data-upload-jobs/{job_id}")
async def poll_upload(id: str, job_id: str, request: Request) -> JSONResponse:
    """Long-poll: hold up to min(timeoutSeconds, cap) waiting for the job, never spin-return PENDING.

    Waits on the event loop rather than in a pool thread, so many concurrent pollers cost nothing.
    """
    emu = emulator(request)
    job = _job(request, id, job_id)
    wait = min(max(qint(request, "timeoutSeconds", 60), 0), emu.config.long_poll_max_seconds)
    deadline = time.monotonic() + wait
    while not job.finished.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(min(_POLL_TICK, max(deadline - time.monotonic(), 0)))
    with emu.state.lock:
        body = job_json(job)
    return ok(body)


@router.post("/storage/folders/{id}/data-upload-jobs/{job_id}/cancel")
def cancel_upload(id: str, job_id: str, request: Request) -> JSONResponse:
    emu = emulator(request)
    job = _job(request, id, job_id)
    cancelled = emu.state.cancel_job(job)
    return ok({"unitsCancelledCount": cancelled})
