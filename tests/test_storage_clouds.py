"""GCS and Azure stores against fake-gcs-server and Azurite: listing, reads, metadata, URLs, errors.

Stores are opened the way the pipeline opens them (open_source + the standard environment variables).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from encord_ingest.errors import ConfigError, CredentialsError, SourceNotFoundError
from encord_ingest.models import ObjectRef
from integrations.encord.emulator.objects import check_objects
from integrations.servers import AZURITE_ACCOUNT, AZURITE_KEY, azure_connection_string
from integrations.storage import ObjectStore, open_source
from tasks.listing import ListingOptions, iter_chunks
from tests.buckets import AzureWriter, BucketWriter, GCSWriter

CLOUD_ENV = ("STORAGE_EMULATOR_HOST", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT")
CLOUD_ENV += ("AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS")

TREE = {
    "data/a/1.jpg": b"one",
    "data/a/2.jpg": b"two!",
    "data/a/2.jpg.json": b'{"n": 2}',
    "data/b/deep/3.png": b"three",
    "data/c.txt": b"c",
    "data/d.mp4": b"dddd",
    "data/empty.json": b"",
    "other/x.jpg": b"x",
}


@dataclass
class Cloud:
    writer: BucketWriter
    env: dict[str, str]

    def store(self) -> ObjectStore:
        return open_source(self.writer.source()).store


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No cloud variable leaks in from the shell running the tests."""
    for name in CLOUD_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _open_cloud(kind: str, request: pytest.FixtureRequest, env_patch: pytest.MonkeyPatch) -> Cloud:
    """A fresh bucket in `kind`'s emulator, with the process environment pointing at that emulator."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    writer: BucketWriter
    if kind == "gcs":
        env = request.getfixturevalue("gcp")
        writer = GCSWriter(request.getfixturevalue("gcs"), name)
    else:
        env = request.getfixturevalue("azure")
        writer = AzureWriter(request.getfixturevalue("azblob"), name)
    for var, value in env.items():
        env_patch.setenv(var, value)
    return Cloud(writer, env)


@pytest.fixture(params=["gcs", "azure"])
def cloud(request: pytest.FixtureRequest, clean_env: pytest.MonkeyPatch) -> Cloud:
    return _open_cloud(request.param, request, clean_env)


@pytest.fixture
def gcs_cloud(request: pytest.FixtureRequest, clean_env: pytest.MonkeyPatch) -> Cloud:
    return _open_cloud("gcs", request, clean_env)


@pytest.fixture
def azure_cloud(request: pytest.FixtureRequest, clean_env: pytest.MonkeyPatch) -> Cloud:
    return _open_cloud("azure", request, clean_env)


def seed_tree(writer: BucketWriter) -> None:
    for key, body in TREE.items():
        writer.put_object(key, body)


def test_list_pages_streams_service_pages_in_key_order(cloud: Cloud) -> None:
    seed_tree(cloud.writer)
    pages = list(cloud.store().list_pages("data/", page_size=2))
    assert len(pages) == 4 and all(len(p) <= 2 for p in pages), [[r.key for r in p] for p in pages]
    refs = [r for p in pages for r in p]
    expected = sorted(k for k in TREE if k.startswith("data/"))
    assert [r.key for r in refs] == expected
    assert {r.key: r.size for r in refs} == {k: len(TREE[k]) for k in expected}
    assert all(r.etag and r.last_modified for r in refs)


def test_list_level_separates_child_prefixes_from_direct_objects(cloud: Cloud) -> None:
    seed_tree(cloud.writer)
    levels = list(cloud.store().list_level("data/"))
    prefixes = [p for ps, _ in levels for p in ps]
    objects = [r.key for _, objs in levels for r in objs]
    assert sorted(prefixes) == ["data/a/", "data/b/"]
    assert objects == ["data/c.txt", "data/d.mp4", "data/empty.json"]


def test_fanout_listing_sees_the_same_objects_as_one_lister(cloud: Cloud) -> None:
    seed_tree(cloud.writer)
    source = open_source(cloud.writer.source("data/"))

    def seen(fanout: int) -> set[str]:
        keys: set[str] = set()
        for chunk in iter_chunks(source, ListingOptions(page_size=2, fanout=fanout)):
            keys.update(e.obj.key for e in chunk.entries)
            keys.update(e.sidecar.key for e in chunk.entries if e.sidecar is not None)
            keys.update(o.key for o in chunk.orphans)
        return keys

    one = seen(1)
    assert one == {k for k in TREE if k.startswith("data/")}
    assert seen(3) == one


def test_reads_whole_ranged_empty_and_to_file(cloud: Cloud, tmp_path: Path) -> None:
    seed_tree(cloud.writer)
    store = cloud.store()
    assert store.read_bytes("data/b/deep/3.png") == b"three"
    assert store.read_bytes("data/b/deep/3.png", max_bytes=2) == b"th"
    assert store.read_bytes("data/c.txt", max_bytes=100) == b"c"
    assert store.read_bytes("data/empty.json", max_bytes=100) == b""
    assert store.read_range("data/b/deep/3.png", 2, 2) == b"re"
    assert store.read_range("data/b/deep/3.png", 3, 100) == b"ee"
    assert store.read_range("data/empty.json", 0, 10) == b""
    target = tmp_path / "out.bin"
    store.download_to("data/a/2.jpg", target)
    assert target.read_bytes() == b"two!"


def test_missing_object_is_file_not_found(cloud: Cloud, tmp_path: Path) -> None:
    store = cloud.store()
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        store.head("nope.jpg")
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        store.read_bytes("nope.jpg", max_bytes=10)
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        store.download_to("nope.jpg", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_missing_bucket_is_source_not_found(cloud: Cloud) -> None:
    missing = open_source(cloud.writer.source().replace(cloud.writer.name, "no-such-bucket-1")).store
    with pytest.raises(SourceNotFoundError, match="no-such-bucket-1"):
        missing.check_access("")
    with pytest.raises(SourceNotFoundError, match="no-such-bucket-1"):
        list(missing.list_pages("x/"))


def test_gcs_head_returns_content_type_and_custom_metadata(gcs_cloud: Cloud) -> None:
    writer = gcs_cloud.writer
    assert isinstance(writer, GCSWriter)
    blob = writer.bucket.blob("m/1.jpg")
    blob.metadata = {"site": "north", "score": "7"}
    blob.upload_from_string(b"x", content_type="image/jpeg")
    writer.put_object("m/2.jpg", b"y")
    store = gcs_cloud.store()
    info = store.head("m/1.jpg")
    assert info.content_type == "image/jpeg"
    assert info.metadata == {"site": "north", "score": "7"}
    assert store.head("m/2.jpg").metadata == {}


def test_azure_head_merges_blob_index_tags_over_metadata(azure_cloud: Cloud) -> None:
    from azure.storage.blob import ContentSettings

    writer = azure_cloud.writer
    assert isinstance(writer, AzureWriter)
    writer.container.upload_blob(
        "m/1.jpg",
        b"x",
        metadata={"site": "north", "both": "from-metadata"},
        tags={"camera": "cam-A", "both": "from-tags"},
        content_settings=ContentSettings(content_type="image/jpeg"),
    )
    writer.put_object("m/2.jpg", b"y", metadata={"only": "metadata"})
    writer.put_object("m/3.jpg", b"z", tags={"only": "tags"})
    store = azure_cloud.store()
    info = store.head("m/1.jpg")
    assert info.content_type == "image/jpeg"
    assert info.metadata == {"site": "north", "camera": "cam-A", "both": "from-tags"}
    assert store.head("m/2.jpg").metadata == {"only": "metadata"}
    assert store.head("m/3.jpg").metadata == {"only": "tags"}


def test_gcs_listing_reads_the_same_objects_as_the_sdk_s_blobs(gcs_cloud: Cloud) -> None:
    """ObjectRefs from the listing's JSON (integrations/storage/gcs.py `_item_ref`) against the SDK's Blobs."""
    from integrations.storage import gcs as gcs_store

    writer = gcs_cloud.writer
    assert isinstance(writer, GCSWriter)
    names = ["with space.jpg", "ünïcode/ß.png", "q?mark#hash+plus.jpg", "a%20b.jpg", "amp&lt;<>'\".jpg", "tab\tx.jpg"]
    names += [f"many/{i:03d}.jpg" for i in range(12)]
    for i, name in enumerate(names):
        writer.put_object(name, b"x" * i)
    writer.put_object("many/000.jpg", b"again")  # a second generation of one object
    stock = [
        gcs_store._ref(b) for page in writer.bucket.client.list_blobs(writer.name, page_size=5).pages for b in page
    ]
    lean = [r for page in gcs_cloud.store().list_pages("", page_size=5) for r in page]
    assert lean == stock and sorted(r.key for r in lean) == sorted(names)
    sdk_pages = writer.bucket.client.list_blobs(writer.name, delimiter="/").pages
    sdk_level = [(list(page.prefixes), [gcs_store._ref(b) for b in page]) for page in sdk_pages]
    assert list(gcs_cloud.store().list_level("")) == sdk_level
    assert sdk_level[0][0] == ["many/", "ünïcode/"] and len(sdk_level[0][1]) == len(names) - 13
    assert all(r.content_id == f"gen:{r.version}" and r.last_modified.endswith("+00:00") for r in lean)


def test_lean_azure_listing_reads_the_same_blobs_as_the_sdk(
    azure_cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The raw List Blobs reader (integrations/storage/azure_pages.py) against the SDK's own models."""
    from azure.storage.blob import BlobPrefix

    from integrations.storage import azure as azure_store
    from integrations.storage.azure import AzureStore

    writer = azure_cloud.writer
    assert isinstance(writer, AzureWriter)
    names = ["with space.jpg", "ünïcode/ß.png", "q?mark#hash+plus.jpg", "a%20b.jpg", "amp&lt;<>'\".jpg", "tab\tx.jpg"]
    names += [f"many/{i:03d}.jpg" for i in range(25)]
    for i, name in enumerate(names):
        writer.put_object(name, b"x" * (i + 1), tags={"n": str(i), "odd key": "v + x/y:z=_"} if i % 4 == 0 else None)
    store = azure_cloud.store()
    assert isinstance(store, AzureStore) and store.raw is not None, "the lean reader is installed"

    def stock(tags: bool) -> list[ObjectRef]:
        pages = writer.container.list_blobs(results_per_page=7, include=["tags"] if tags else None).by_page()
        return [azure_store._ref(b) for page in pages for b in page]

    for tags in (False, True):
        store.list_tags = tags
        lean = [r for page in store.list_pages("", page_size=7) for r in page]
        assert lean == stock(tags) and sorted(r.key for r in lean) == sorted(names)
        assert all(r.content_id.startswith("md5:") for r in lean)
        assert [bool(r.tags) for r in lean] == [tags and r.key in names[::4] for r in lean]
    assert store.raw.lean == 10 and store.raw.declined == 0, "5 pages each time, none through the SDK"
    sdk_prefixes: list[str] = []
    sdk_objects: list[ObjectRef] = []
    for item in writer.container.walk_blobs(delimiter="/", include=["tags"]):  # one level, as list_level
        if isinstance(item, BlobPrefix):
            sdk_prefixes.append(item.name)
        else:
            sdk_objects.append(azure_store._ref(item))
    level = list(store.list_level(""))
    assert [p for ps, _ in level for p in ps] == sdk_prefixes == ["many/", "ünïcode/"]
    assert [r for _, rs in level for r in rs] == sdk_objects and len(sdk_objects) == len(names) - 26
    assert store.raw.lean == 11 and store.raw.declined == 0, "the level came as one lean page"

    # a lean page that fails hands the listing to the SDK, which finishes it from that marker
    sent = store.raw.generated._send_request
    calls: list[str] = []

    def flaky(request: Any, **kwargs: Any) -> Any:
        calls.append(request.url)
        if len(calls) == 3:
            raise ConnectionResetError("reset by peer")
        return sent(request, **kwargs)

    monkeypatch.setattr(store.raw.generated, "_send_request", flaky)
    store.list_tags = False
    again = [r for page in store.list_pages("", page_size=7) for r in page]
    assert again == stock(False)
    assert store.raw.declined == 1 and len(calls) == 3 and "marker=" in calls[2]
    assert [r.key for page in store.list_pages("many/", page_size=10) for r in page] == names[6:]


class _Unavailable:
    """What azure-core hands back when a 503 outlasted its retries (a streamed response)."""

    status_code = 503
    reason = "Service Unavailable"
    headers: dict[str, str] = {}

    def read(self) -> bytes:
        return b"<Error><Code>ServerBusy</Code></Error>"

    def text(self) -> str:
        return self.read().decode()

    def close(self) -> None:
        pass


@pytest.mark.parametrize("failure", ["503", "unreachable"])
def test_a_lean_azure_page_that_fails_after_the_pipeline_s_retries_is_not_retried_again(
    azure_cloud: Cloud, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The pipeline has retried it already: the error is the store's AbortError at once, the SDK
    is not asked to start over (which would double the wait before a dead endpoint is reported)."""
    from azure.core.exceptions import ServiceRequestError

    from encord_ingest.errors import AbortError

    azure_cloud.writer.put_object("a.jpg", b"a")
    store = azure_cloud.store()
    assert store.raw is not None

    def failing(request: Any, **kwargs: Any) -> Any:
        if failure == "unreachable":
            raise ServiceRequestError("connection refused")
        return _Unavailable()

    def no_sdk(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the SDK was asked to list again")

    monkeypatch.setattr(store.raw.generated, "_send_request", failing)
    monkeypatch.setattr(store.container, "list_blobs", no_sdk)
    monkeypatch.setattr(store.container, "walk_blobs", no_sdk)
    with pytest.raises(AbortError) as raised:
        list(store.list_pages(""))
    assert ("503" in str(raised.value)) == (failure == "503") and "sig=" not in str(raised.value)
    with pytest.raises(AbortError):
        list(store.list_level(""))


KEY = "sp ace/ü#?.jpg"


def _assert_emulator_resolves(cloud: Cloud, store: ObjectStore) -> None:
    """The manifest URL must round-trip through the emulator's parser, as Encord resolves it."""
    cloud.writer.put_object(KEY, b"z")
    present, absent = store.url_for(KEY), store.url_for("absent.jpg")
    assert check_objects([present, absent]) == {present: None, absent: f"Object not found in bucket: {absent}"}


def test_gcs_manifest_urls_are_gs_urls(gcs_cloud: Cloud) -> None:
    store = gcs_cloud.store()
    assert store.url_for(KEY) == f"gs://{gcs_cloud.writer.name}/{KEY}"
    _assert_emulator_resolves(gcs_cloud, store)


def test_azure_manifest_urls_come_from_the_blob_endpoint_quoted(azure_cloud: Cloud) -> None:
    store = azure_cloud.store()
    endpoint = azure_cloud.env["AZURE_STORAGE_CONNECTION_STRING"].split("BlobEndpoint=")[1].rstrip(";")
    assert endpoint.endswith(f"/{AZURITE_ACCOUNT}")
    assert store.url_for(KEY) == f"{endpoint}/{azure_cloud.writer.name}/sp%20ace/%C3%BC%23%3F.jpg"
    _assert_emulator_resolves(azure_cloud, store)


def test_azure_account_option_gives_the_https_form_without_network(clean_env: Any) -> None:
    clean_env.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    store = open_source("az://media/a/", account="myaccount").store
    assert store.url_for("a/b c.jpg") == "https://myaccount.blob.core.windows.net/media/a/b%20c.jpg"
    assert store.url_for("") == "https://myaccount.blob.core.windows.net/media/"


def test_azure_sas_connection_string_lists_and_never_leaks_the_signature(
    azurite: Any, azblob: Any, clean_env: Any
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    writer = AzureWriter(azblob, f"t-{uuid.uuid4().hex[:12]}")
    writer.put_object("a.jpg", b"a")
    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        writer.name,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    clean_env.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={azurite.url}/{AZURITE_ACCOUNT};SharedAccessSignature={sas}"
    )
    store = open_source(writer.source()).store
    store.check_access("")
    assert [r.key for p in store.list_pages("") for r in p] == ["a.jpg"]
    assert (store.raw.lean, store.raw.declined) == (1, 0), "the raw listing pages are signed by the SAS too"
    assert store.read_bytes("a.jpg") == b"a"
    assert store.url_for("a.jpg") == f"{azurite.url}/{AZURITE_ACCOUNT}/{writer.name}/a.jpg"


@pytest.mark.parametrize("key", ["A" * 86 + "==", "not-base64!"])
def test_azure_wrong_key_is_a_credentials_error_without_the_key(azurite: Any, clean_env: Any, key: str) -> None:
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_connection_string(azurite.url, key=key))
    store = open_source("az://any-container/").store
    with pytest.raises(CredentialsError) as caught:
        store.check_access("")
    assert key not in str(caught.value) and "AccountKey" not in str(caught.value)
    assert "any-container" in str(caught.value)


def test_azure_configuration_errors_name_no_secret(clean_env: Any) -> None:
    with pytest.raises(ConfigError, match="AZURE_STORAGE_CONNECTION_STRING or --account"):
        open_source("az://c/")
    with pytest.raises(ConfigError, match="azure-identity"):
        open_source("az://c/", account="acct")
    with pytest.raises(ConfigError, match="not an Azure storage account name"):
        open_source("az://c/", account="evil.example/x")
    clean_env.setenv("AZURE_STORAGE_ACCOUNT", "fromenv")
    clean_env.setenv("AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=secret")
    store = open_source("az://c/").store
    assert store.url_for("k") == "https://fromenv.blob.core.windows.net/c/k"
    clean_env.delenv("AZURE_STORAGE_ACCOUNT")
    clean_env.delenv("AZURE_STORAGE_SAS_TOKEN")
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName=real;AccountKey={AZURITE_KEY}")
    with pytest.raises(ConfigError, match="does not match") as caught:
        open_source("az://c/", account="other")
    assert AZURITE_KEY not in str(caught.value)
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", f"garbage{AZURITE_KEY}")
    with pytest.raises(ConfigError, match="malformed") as caught:
        open_source("az://c/")
    assert AZURITE_KEY not in str(caught.value)


def test_gcs_unusable_credentials_file_is_a_credentials_error(clean_env: Any, tmp_path: Path) -> None:
    clean_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(CredentialsError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        open_source("gs://bucket/")


def test_emulator_checks_many_urls_by_listing_one_prefix(cloud: Cloud) -> None:
    """Above the HEAD threshold the emulator lists the common prefix: exercised here on the live emulators."""
    seed_tree(cloud.writer)
    store = cloud.store()
    urls = [store.url_for(k) for k in ("data/a/1.jpg", "data/a/2.jpg", "data/a/zz.jpg")]
    result = check_objects(urls, head_threshold=1)
    assert result[urls[0]] is None and result[urls[1]] is None
    assert result[urls[2]] == f"Object not found in bucket: {urls[2]}"
    gone = [u.replace(cloud.writer.name, "no-such-bucket-1") for u in urls]
    assert all("not found" in (msg or "") for msg in check_objects(gone, head_threshold=1).values())
    assert all("not found" in (msg or "") for msg in check_objects(gone[:1]).values())


def test_a_flat_level_split_across_listers_is_listed_whole_and_paired(cloud: Cloud) -> None:
    """Stores that can start a listing at a key (GCS) hand ranges of a long level to other listers."""
    keys = [f"flat/img_{i:03d}.jpg" for i in range(60)] + [f"flat/img_{i:03d}.jpg.json" for i in range(0, 60, 4)]
    keys += ["flat/img_02", "flat/sub/x.jpg"]
    for key in keys:
        cloud.writer.put_object(key, b"x")
    source = open_source(cloud.writer.source("flat/"))

    def listing(fanout: int) -> tuple[list[tuple[str, str | None]], int]:
        pairs: list[tuple[str, str | None]] = []
        streams: set[int] = set()
        for chunk in iter_chunks(source, ListingOptions(page_size=4, fanout=fanout, split_page_seconds=0)):
            pairs += [(e.obj.key, e.sidecar.key if e.sidecar else None) for e in chunk.entries]
            assert not chunk.orphans
            streams.add(chunk.stream)
        return sorted(pairs), len(streams)

    serial, _ = listing(1)
    split, streams = listing(3)
    assert split == serial and len(serial) == 62 and sum(1 for _, s in serial if s) == 15
    ranged = getattr(source.store, "list_from", None)
    assert (streams > 2) == (ranged is not None)
    if ranged is not None:  # the start is inclusive, a key equal to it included
        first = next(refs for _, refs in ranged("flat/", "flat/img_02", page_size=3) if refs)
        assert [r.key for r in first] == ["flat/img_02", "flat/img_020.jpg", "flat/img_020.jpg.json"]
