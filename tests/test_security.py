"""Planted secrets must appear nowhere: logs, stderr, dead letters, manifests, the ledger, Prefect."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from integrations.servers import make_keypair

PLANTED_AWS = "PLANTED-aws-secret-7Qx2Lk9v"


def _key_material(private_key: Path) -> list[str]:
    """Distinctive pieces of the private key text (its base64 body lines)."""
    lines = [ln.strip() for ln in private_key.read_text().splitlines() if ln and not ln.startswith("-----")]
    return [ln for ln in lines if len(ln) >= 20]


def _everything_written(root: Path, *, besides: tuple[Path, ...]) -> str:
    """Every file a run left under `root` (the key files the test itself wrote excepted)."""
    chunks = []
    for path in root.rglob("*"):
        if path.is_file() and "prefect-home" not in path.parts and path not in besides:
            chunks.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(chunks)


def _prefect_records() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        logs = client.read_logs()
        artifacts = client.read_artifacts()
    return "\n".join([*(log.message for log in logs), *(json.dumps(a.data, default=str) for a in artifacts)])


def test_no_planted_secret_leaks_anywhere(cli: Any, emulator: Any, s3: Any, tmp_path: Path) -> None:
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=b"x")
    s3.put_object(Bucket=bucket, Key="a.jpg.json", Body=b'{"ok": 1}')
    s3.put_object(Bucket=bucket, Key="b.jpg", Body=b"x")
    s3.put_object(Bucket=bucket, Key="b.jpg.json", Body=b"{broken")
    key_text = (Path(cli.env["ENCORD_SSH_KEY_FILE"])).read_text()
    env = {"AWS_SECRET_ACCESS_KEY": PLANTED_AWS, "ENCORD_SSH_KEY": key_text, "ENCORD_SSH_KEY_FILE": ""}
    outputs = []
    emulator.faults(0.2, ["500", "429"])
    runs = [
        ("ingest", f"s3://{bucket}/", "--folder", "s", "--integration", "local-aws", "--metadata", "sidecar", "-v"),
        ("ingest", f"s3://{bucket}/", "--folder", "s", "--integration", "no-such-integration"),
        ("ingest", "s3://no-such-bucket-xyz/", "--folder", "s", "--integration", "local-aws"),
        ("manifest", f"s3://{bucket}/", "--out", str(tmp_path / "manifests"), "--metadata", "sidecar"),
    ]
    for args in runs:
        result = cli(*args, "--json", extra_env=env)
        outputs += [result.stdout, result.stderr]
    emulator.faults(0.0, [])
    stranger = make_keypair(tmp_path, "stranger")
    refused = cli(*runs[0], extra_env={**env, "ENCORD_SSH_KEY": stranger.private.read_text()})
    assert refused.code == 3
    outputs += [refused.stdout, refused.stderr]
    secrets = [PLANTED_AWS, *_key_material(Path(cli.env["ENCORD_SSH_KEY_FILE"])), *_key_material(stranger.private)]
    haystacks = {
        "stdout/stderr": "\n".join(outputs),
        "files (dead letters, manifests, ledger)": _everything_written(
            tmp_path, besides=(stranger.private, stranger.public)
        ),
        "Prefect logs and artifacts": _prefect_records(),
    }
    assert list(tmp_path.rglob("*.jsonl")) and list(tmp_path.rglob("ledger.db")), "the runs wrote their files"
    assert "sidecar.json" in haystacks["files (dead letters, manifests, ledger)"]
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"a planted secret leaked into {where}"


def test_manifests_carry_plain_object_urls_never_signed_ones(cli: Any, s3: Any, tmp_path: Path) -> None:
    bucket = f"urls-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for key in ("plain.jpg", "with space.jpg", "ünïcode/ß.png", "q?mark#hash+plus.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    result = cli("manifest", f"s3://{bucket}/", "--out", str(tmp_path / "m"), "--json")
    assert result.code == 0, result.stderr
    manifests = [json.loads(p.read_text()) for p in sorted((tmp_path / "m").glob("manifest-*.json"))]
    urls = sorted(i["objectUrl"] for m in manifests for i in m["images"])
    assert urls == sorted(
        f"s3://{bucket}/{k}" for k in ("plain.jpg", "with space.jpg", "ünïcode/ß.png", "q?mark#hash+plus.jpg")
    )
    text = json.dumps(manifests)
    for marker in ("X-Amz-Signature", "X-Amz-Credential", "sig=", "Signature="):
        assert marker not in text


def test_keys_that_need_encoding_register_end_to_end(cli: Any, emulator: Any, s3: Any) -> None:
    bucket = f"odd-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    keys = ["with space.jpg", "ünïcode/ß.png", "q?mark#hash+plus.jpg", "a%20b.jpg", "deep/" * 20 + "x.jpg"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    result = cli("ingest", f"s3://{bucket}/", "--folder", "odd", "--integration", "local-aws", "--json")
    assert result.code == 0, result.stderr[-2000:]
    assert sorted(i["url"] for i in emulator.state()["items"]) == sorted(f"s3://{bucket}/{k}" for k in keys)


def test_lean_s3_listing_reads_the_same_objects_as_stock_boto3(
    s3: Any, aws_in_environ: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing client's own `<Contents>` reader against botocore's parser, on keys that need escaping."""
    from integrations.storage import s3_contents
    from integrations.storage.s3 import S3Store

    bucket = f"lean-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    keys = ["with space.jpg", "ünïcode/ß.png", "q?mark#hash+plus.jpg", "a%20b.jpg", "amp&lt;<>'\".jpg", "tab\tx.jpg"]
    keys += [f"many/{i:03d}.jpg" for i in range(25)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * (i + 1))
    store = S3Store(bucket)
    page = store.lister.list_objects_v2(Bucket=bucket, MaxKeys=10)
    assert s3_contents.RESULT_KEY in page and "Contents" not in page, "the lean reader is installed"
    stock = [
        (o["Key"], o["Size"], o["ETag"].strip('"'))
        for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 10})
        for o in p.get("Contents", ())
    ]
    lean = [(r.key, r.size, r.etag) for p in store.list_pages("", page_size=10) for r in p]
    assert lean == stock and sorted(k for k, _, _ in lean) == sorted(keys)
    assert store.raw is not None and store.raw.lean == 3, "pages after the first come without botocore"

    # a lean page that fails hands the listing back to botocore, which finishes it from that token
    sent = store.raw.session.send
    calls = []

    def flaky(request: Any) -> Any:
        calls.append(request.url)
        if len(calls) == 2:
            raise ConnectionResetError("reset by peer")
        return sent(request)

    monkeypatch.setattr(store.raw.session, "send", flaky)
    again = [(r.key, r.size, r.etag) for p in store.list_pages("", page_size=10) for r in p]
    assert again == stock
    # calls[0] is botocore's own first page (the session is shared); the first lean page fails
    assert store.raw.declined == 1 and store.raw.lean == 3 and "continuation-token=" in calls[1]
    level = list(store.list_level(""))
    assert sorted(p for prefixes, _ in level for p in prefixes) == ["many/", "ünïcode/"]
    assert len([r for _, objects in level for r in objects]) == len(keys) - 26


def test_lean_s3_level_listing_reads_the_same_prefixes_and_objects_as_stock_boto3(
    s3: Any, aws_in_environ: None
) -> None:
    """A delimited level (the fanout's root, a flat bucket whole) read lean after its first page,
    page by page the same as botocore's parser, prefixes that need escaping or URL-decoding included."""
    from integrations.storage.s3 import S3Store

    bucket = f"level-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    prefixes = ["sp ace/", "ünï/", "amp&lt;</", "plus+/", "pct%20/", *[f"dir{i:02d}/" for i in range(12)]]
    root = [f"root-{i:02d}.jpg" for i in range(12)] + ["q?mark#hash.jpg", "tab\tx.jpg"]
    for i, key in enumerate([*root, *(p + "a.jpg" for p in prefixes), *(p + "b/c.jpg" for p in prefixes)]):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * (i + 1))
    store = S3Store(bucket)

    def stock(prefix: str) -> list[tuple[list[str], list[tuple[str, int, str]]]]:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/", PaginationConfig={"PageSize": 10}
        )
        return [
            ([p["Prefix"] for p in page.get("CommonPrefixes", ())],
             [(o["Key"], o["Size"], o["ETag"].strip('"')) for o in page.get("Contents", ())])
            for page in pages
        ]  # fmt: skip

    def lean(prefix: str) -> list[tuple[list[str], list[tuple[str, int, str]]]]:
        return [(p, [(r.key, r.size, r.etag) for r in refs]) for p, refs in store.list_level(prefix, page_size=10)]

    top = stock("")
    assert lean("") == top and len(top) == 4
    assert sorted(p for page, _ in top for p in page) == sorted(prefixes)
    assert sorted(k for _, objects in top for k, _, _ in objects) == sorted(root)
    assert store.raw is not None and (store.raw.lean, store.raw.declined) == (3, 0), "pages after the first lean"
    for prefix in ("ünï/", "amp&lt;</", "pct%20/"):
        below = stock(prefix)
        assert lean(prefix) == below and below == [([f"{prefix}b/"], [(f"{prefix}a.jpg", *below[0][1][0][1:])])]
