"""JSON shapes the SDK's pydantic DTOs expect (camelCase; every Optional field present, even when null)."""

from __future__ import annotations

import json
import mimetypes
from typing import Any

from .objects import UnsupportedUrl, parse_url
from .state import Folder, Item, State, UploadJob

OWNER = "emulator@encord.local"

# emulator kind -> encord.orm.storage.StorageItemType value
ITEM_TYPES: dict[str, str] = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "pdf": "pdf",
    "text": "plainText",
    "nifti": "nifti",
    "timeseries": "timeseries",
    "image_group": "imageGroup",
    "image_sequence": "imageSequence",
    "dicom_series": "dicomSeries",
}
KINDS_BY_ITEM_TYPE = {v: k for k, v in ITEM_TYPES.items()}
_LOCATIONS = {"s3": "s3", "gcs": "gcp", "azure": "azure", "file": "directAccess"}


def folder_json(state: State, folder: Folder) -> dict[str, Any]:
    return {
        "uuid": folder.uuid,
        "parent": folder.parent,
        "name": folder.name,
        "description": folder.description,
        "clientMetadata": folder.client_metadata,
        "owner": OWNER,
        "createdAt": folder.created_at,
        "lastEditedAt": folder.last_edited_at,
        "userRole": "admin",
        "syncedDatasetHash": None,
        "pathToRoot": [
            {"uuid": f.uuid, "parentUuid": f.parent, "name": f.name, "syncedDatasetHash": None}
            for f in state.ancestors(folder)
        ],
        "folderType": "generic",
        "integrationHash": None,
        "remoteUrl": None,
    }


def _location(url: str) -> str:
    try:
        return _LOCATIONS[parse_url(url).provider]
    except UnsupportedUrl:
        return "encord"


def item_json(item: Item, *, include_metadata: bool = True, metadata_url: str | None = None) -> dict[str, Any]:
    """StorageItem DTO; with metadata_url the metadata is delivered as a signed URL (SDK resolves it)."""
    media = item.media
    multi = item.kind in ("image_group", "image_sequence", "dicom_series")
    if metadata_url is not None:
        client_metadata = ""
    elif include_metadata:
        client_metadata = json.dumps(item.client_metadata)
    else:
        client_metadata = "{}"
    body: dict[str, Any] = {
        "uuid": item.uuid,
        "parent": item.folder,
        "itemType": ITEM_TYPES[item.kind],
        "name": item.title,
        "description": "",
        "clientMetadata": client_metadata,
        "owner": OWNER,
        "createdAt": item.created_at,
        "lastEditedAt": item.last_edited_at,
        "isTombstone": False,
        "isPlaceholder": False,
        "backedDataUnitsCount": 0,
        "storageLocation": _location(item.urls[0]),
        "integrationHash": item.integration,
        "url": item.urls[0],
        "signedUrl": None,
        "fileSize": media.get("fileSize"),
        "mimeType": media.get("mimeType") or (None if multi else mimetypes.guess_type(item.urls[0])[0]),
        "duration": media.get("duration"),
        "fps": media.get("fps"),
        "height": media.get("height"),
        "width": media.get("width"),
        "dicomInstanceUid": None,
        "dicomStudyUid": None,
        "dicomSeriesUid": None,
        "frameCount": len(item.urls) if multi else None,
        "audioSampleRate": media.get("sampleRate"),
        "audioBitDepth": media.get("bitDepth"),
        "audioCodec": media.get("codec"),
        "audioNumChannels": media.get("numChannels"),
    }
    if metadata_url is not None:
        body["clientMetadataSignedUrl"] = metadata_url
    return body


def job_json(job: UploadJob) -> dict[str, Any]:
    """UploadLongPollingState."""
    return {
        "status": job.status,
        "itemsWithNames": [{"itemUuid": i, "name": n} for i, n in job.items_with_names],
        "errors": [e["error"] for e in job.unit_errors],
        "unitsPendingCount": job.pending,
        "unitsDoneCount": job.done,
        "unitsErrorCount": job.error,
        "unitsCancelledCount": job.cancelled,
        "unitErrors": list(job.unit_errors),
        "fileName": job.file_name,
    }


def item_state_json(item: Item) -> dict[str, Any]:
    """Shape of an item in GET /_emulator/state."""
    body: dict[str, Any] = {
        "uuid": item.uuid,
        "folder": item.folder,
        "type": item.kind,
        "url": item.urls[0],
        "title": item.title,
        "client_metadata": item.client_metadata,
    }
    if item.kind in ("image_group", "image_sequence", "dicom_series"):
        body["files"] = list(item.urls)
    return body


def job_state_json(job: UploadJob) -> dict[str, Any]:
    """Shape of an upload in GET /_emulator/state."""
    return {
        "job": job.uuid,
        "folder": job.folder,
        "status": job.status,
        "items": [i for i, _ in job.items_with_names],
        "errors": [{"urls": e["objectUrls"], "error": e["error"]} for e in job.unit_errors],
        "ignore_errors": job.ignore_errors,
        "integration": job.integration,
        "file_name": job.file_name,
        "counts": {"pending": job.pending, "done": job.done, "error": job.error, "cancelled": job.cancelled},
    }
