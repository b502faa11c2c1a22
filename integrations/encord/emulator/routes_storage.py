"""Storage folders and items: create/find/list/get folders, list/get/patch/delete items (v2 REST)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .errors import bad_request, no_access
from .manifest import json_size
from .params import json_body, ok, page, page_bounds, qbool, qlist
from .runtime import Emulator, emulator
from .state import Folder, Item, NotFound
from .wire import KINDS_BY_ITEM_TYPE, folder_json, item_json

router = APIRouter(prefix="/v2/public")


def _folder(emu: Emulator, folder_id: str) -> Folder:
    try:
        return emu.state.folder(folder_id)
    except NotFound:
        raise no_access("folder", folder_id) from None


def _item(emu: Emulator, item_id: str) -> Item:
    try:
        return emu.state.item(item_id)
    except NotFound:
        raise no_access("item", item_id) from None


def _check_metadata_size(emu: Emulator, metadata: Any) -> None:
    size = json_size(metadata)
    if size > emu.config.metadata_limit_bytes:
        raise bad_request(
            f"Invalid clientMetadata: {size} bytes exceeds the size limit of {emu.config.metadata_limit_bytes} bytes"
        )


def _folder_page(request: Request, *, parent: str | None, recursive: bool) -> dict[str, Any]:
    emu = emulator(request)
    folders = emu.state.list_folders(
        parent=parent,
        recursive=recursive,
        search=request.query_params.get("search"),
        order=request.query_params.get("order", "name"),
        desc=bool(qbool(request, "desc", False)),
    )
    if qbool(request, "datasetSynced") is True:
        folders = []  # the emulator never mirrors folders into datasets
    start, stop, token = page_bounds(request, len(folders))
    return page([folder_json(emu.state, f) for f in folders[start:stop]], token)


@router.get("/storage/folders")
def list_top_folders(request: Request) -> JSONResponse:
    return ok(_folder_page(request, parent=None, recursive=bool(qbool(request, "isRecursive", False))))


@router.get("/storage/search/folders")
def search_folders(request: Request) -> JSONResponse:
    return ok(_folder_page(request, parent=None, recursive=True))


@router.post("/storage/folders")
async def create_folder(request: Request) -> JSONResponse:
    emu = emulator(request)
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
        raise bad_request("Folder 'name' is required")
    metadata = body.get("clientMetadata")
    if metadata is not None and not isinstance(metadata, str):
        raise bad_request("Folder 'clientMetadata' must be a JSON string")
    if body.get("cloudSyncedFolderParams"):
        raise bad_request("Cloud-synced folders are not supported by the Encord emulator")
    parent = body.get("parent")
    if parent is not None:
        _folder(emu, str(parent))
    folder = emu.state.create_folder(body["name"], body.get("description") or "", parent, metadata)
    return ok(folder_json(emu.state, folder))


def _folder_patch(emu: Emulator, patch: Any) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise bad_request("Folder patch must be a JSON object")
    result: dict[str, Any] = {"name": patch.get("name"), "description": patch.get("description")}
    if patch.get("clientMetadata") is not None:
        _check_metadata_size(emu, patch["clientMetadata"])
        result["client_metadata"] = json.dumps(patch["clientMetadata"])
    return result


@router.patch("/storage/folders/patch-bulk")
async def patch_folders_bulk(request: Request) -> JSONResponse:
    emu = emulator(request)
    body = await json_body(request)
    patches = body.get("folderPatches") if isinstance(body, dict) else None
    if not isinstance(patches, dict):
        raise bad_request("'folderPatches' must be an object")
    checked = {folder_id: _folder_patch(emu, p) for folder_id, p in patches.items()}
    for folder_id in checked:
        _folder(emu, folder_id)
    updated = [emu.state.update_folder(folder_id, p) for folder_id, p in checked.items()]
    return ok(page([folder_json(emu.state, f) for f in updated], None))


@router.get("/storage/folders/{id}")
def get_folder(id: str, request: Request) -> JSONResponse:
    emu = emulator(request)
    return ok(folder_json(emu.state, _folder(emu, id)))


@router.patch("/storage/folders/{id}")
async def patch_folder(id: str, request: Request) -> JSONResponse:
    emu = emulator(request)
    _folder(emu, id)
    patch = _folder_patch(emu, await json_body(request))
    return ok(folder_json(emu.state, emu.state.update_folder(id, patch)))


@router.delete("/storage/folders/{id}")
def delete_folder(id: str, request: Request) -> Response:
    emu = emulator(request)
    _folder(emu, id)
    emu.state.delete_folder(id)
    return Response(status_code=204)


@router.get("/storage/folders/{id}/folders")
def list_subfolders(id: str, request: Request) -> JSONResponse:
    _folder(emulator(request), id)
    return ok(_folder_page(request, parent=id, recursive=bool(qbool(request, "isRecursive", False))))


@router.get("/storage/folders/{id}/items")
def list_items(id: str, request: Request) -> JSONResponse:
    emu = emulator(request)
    _folder(emu, id)
    kinds = frozenset(KINDS_BY_ITEM_TYPE.get(t, t) for t in qlist(request, "itemTypes"))
    ids = emu.state.list_item_ids(
        id,
        search=request.query_params.get("search"),
        kinds=kinds,
        order=request.query_params.get("order", "name"),
        desc=bool(qbool(request, "desc", False)),
    )
    if qbool(request, "isInDataset") is True:
        ids = []  # items are never linked to datasets in the emulator
    start, stop, token = page_bounds(request, len(ids))
    include = qbool(request, "includeClientMetadata", True) is not False
    as_url = include and bool(qbool(request, "clientMetadataAsSignedUrl", False))
    base = str(request.base_url).rstrip("/")
    results = []
    with emu.state.lock:
        for item_id in ids[start:stop]:
            item = emu.state.items.get(item_id)
            if item is not None:
                url = f"{base}/_emulator/items/{item.uuid}/client-metadata" if as_url else None
                results.append(item_json(item, include_metadata=include, metadata_url=url))
    return ok(page(results, token))


def _item_patch(emu: Emulator, item: Item, patch: Any) -> None:
    if patch.get("clientMetadata") is not None:
        emu.state.set_item_metadata(item, patch["clientMetadata"])
    if patch.get("name"):
        emu.state.rename_item(item, patch["name"])


def _validate_item_patch(emu: Emulator, patch: Any) -> None:
    if not isinstance(patch, dict):
        raise bad_request("Item patch must be a JSON object")
    metadata = patch.get("clientMetadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise bad_request("'clientMetadata' must be a JSON object")
        _check_metadata_size(emu, metadata)


@router.patch("/storage/folders/{id}/items/{item_id}")
async def patch_item(id: str, item_id: str, request: Request) -> JSONResponse:
    emu = emulator(request)
    item = _item(emu, item_id)
    if item.folder != id:
        raise no_access("item", f"{item_id} in folder {id}")
    patch = await json_body(request)
    _validate_item_patch(emu, patch)
    _item_patch(emu, item, patch)
    return ok(item_json(item))


@router.post("/storage/folders/{id}/items/delete")
async def delete_items(id: str, request: Request) -> JSONResponse:
    emu = emulator(request)
    _folder(emu, id)
    body = await json_body(request)
    uuids = body.get("childUuids") if isinstance(body, dict) else None
    if not isinstance(uuids, list):
        raise bad_request("'childUuids' must be a list")
    removed = emu.state.delete_items(id, [str(u) for u in uuids])
    return ok({"removedItemsCount": removed, "removedFoldersCount": 0})


@router.get("/storage/items/{item_id}")
def get_item(item_id: str, request: Request) -> JSONResponse:
    return ok(item_json(_item(emulator(request), item_id)))


@router.post("/storage/items/get-bulk")
async def get_items_bulk(request: Request) -> JSONResponse:
    emu = emulator(request)
    body = await json_body(request)
    uuids = body.get("itemUuids") if isinstance(body, dict) else None
    if not isinstance(uuids, list):
        raise bad_request("'itemUuids' must be a list")
    return ok(page([item_json(_item(emu, str(u))) for u in uuids], None))


@router.patch("/storage/items/patch-bulk")
async def patch_items_bulk(request: Request) -> JSONResponse:
    emu = emulator(request)
    body = await json_body(request)
    patches = body.get("itemPatches") if isinstance(body, dict) else None
    if not isinstance(patches, dict):
        raise bad_request("'itemPatches' must be an object")
    targets = [(_item(emu, item_id), patch) for item_id, patch in patches.items()]
    for _, patch in targets:
        _validate_item_patch(emu, patch)
    for item, patch in targets:
        _item_patch(emu, item, patch)
    return ok(page([item_json(item) for item, _ in targets], None))
