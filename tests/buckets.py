"""Seeding helpers shared by the cloud tests: one small bucket writer per cloud and the mixed-bucket data.

A writer creates its bucket on construction and knows the SOURCE URL, the URL Encord is given for a key,
and the emulator integration that resolves those URLs.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

SCHEMA = """
keys:
  site: {type: enum, values: [north, south, bad]}
  score: number
  reviewed: boolean
  captured_at: datetime
  camera: varchar
"""

TABLE = """key,camera,site,score
data/north/cam1/img0001.jpg,cam-A,,
data/south/clip.mp4,cam-B,,42
data/bad/badenum.jpg,,west,
"""

VALID = {
    "data/north/cam1/img0001.jpg": ("image", {"site": "north", "camera": "cam-A", "score": 0.5, "reviewed": True}),
    "data/north/cam1/img0002.jpg": ("image", {"site": "north", "score": 7}),
    "data/north/cam1/img0003.png": ("image", {"site": "north", "captured_at": "2024-01-02T03:04:05Z"}),
    "data/south/clip.mp4": ("video", {"site": "south", "camera": "cam-B", "score": 42}),
    "data/south/song.wav": ("audio", {"site": "south"}),
    "data/south/doc.pdf": ("pdf", {"site": "south"}),
    "data/south/notes.txt": ("text", {"site": "south"}),
}

INVALID = {
    "data/bad/notjson.jpg": "sidecar.json",
    "data/bad/badtype.jpg": "type.number",
    "data/bad/badkey.jpg": "key.charset",
    "data/bad/badenum.jpg": "enum.value",
    "data/bad/dup.jpg": "sidecar.duplicate_key",
    "data/bad/array.jpg": "sidecar.not_object",
    "data/bad/nan.jpg": "sidecar.nan",
}

SIDECARS = {
    "data/north/cam1/img0001.jpg.json": '{"score": 0.5, "reviewed": "true"}',
    "data/north/cam1/img0002.json": '{"score": "7"}',
    "data/north/cam1/img0003.png.metadata.json": '{"captured_at": "2024-01-02T03:04:05Z"}',
    "data/bad/notjson.jpg.json": "{not json",
    "data/bad/badtype.jpg.json": '{"score": "high"}',
    "data/bad/badkey.jpg.json": '{"bad key!": 1}',
    "data/bad/dup.jpg.json": '{"a": 1, "a": 2}',
    "data/bad/array.jpg.json": "[1, 2]",
    "data/bad/nan.jpg.json": '{"score": NaN}',
}

SKIPPED = ["data/south/blob.xyz", "data/south/orphan.json"]


class BucketWriter(Protocol):
    """One fresh bucket (container) in one cloud's emulator."""

    cloud: str
    integration: str
    name: str

    def put_object(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> None: ...

    def source(self, prefix: str = "") -> str:
        """The SOURCE URL the CLI is given."""
        ...

    def url(self, key: str) -> str:
        """The objectUrl Encord is given (and the emulator's state shows)."""
        ...


class S3Writer:
    cloud = "s3"
    integration = "local-aws"

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name
        client.create_bucket(Bucket=name)

    def put_object(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body, Metadata=metadata or {})

    def source(self, prefix: str = "") -> str:
        return f"s3://{self.name}/{prefix}"

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"


class GCSWriter:
    cloud = "gcs"
    integration = "local-gcp"

    def __init__(self, client: Any, name: str) -> None:
        self.bucket = client.create_bucket(name)
        self.name = name

    def put_object(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> None:
        blob = self.bucket.blob(key)
        blob.metadata = metadata or None
        # upload_from_string defaults to text/plain; S3 and Azure store octet-stream when none is given
        blob.upload_from_string(body, content_type="application/octet-stream")

    def source(self, prefix: str = "") -> str:
        return f"gs://{self.name}/{prefix}"

    def url(self, key: str) -> str:
        return f"gs://{self.name}/{key}"


class AzureWriter:
    cloud = "azure"
    integration = "local-azure"

    def __init__(self, service: Any, name: str) -> None:
        self.container = service.create_container(name)
        self.name = name

    def put_object(
        self, key: str, body: bytes, metadata: dict[str, str] | None = None, tags: dict[str, str] | None = None
    ) -> None:
        self.container.upload_blob(key, body, metadata=metadata, tags=tags, overwrite=True)

    def source(self, prefix: str = "") -> str:
        return f"az://{self.name}/{prefix}"

    def url(self, key: str) -> str:
        return f"{self.container.url}/{quote(key, safe='/')}"


def seed_mixed(bucket: BucketWriter) -> None:
    """Valid and invalid items with sidecars, files to skip, and one object outside the include set."""
    for key in [*VALID, *INVALID, "data/south/blob.xyz", "data/outside.jpg"]:
        bucket.put_object(key, b"\x00data")
    for key, body in SIDECARS.items():
        bucket.put_object(key, body.encode())
    bucket.put_object("data/south/orphan.json", b"{}")
