"""The benchmarks' moto answers ListObjectsV2 from a snapshot; boto3 must read the same as from stock moto.

Both servers run in this process over one moto backend (bench/moto_seeded.py `serve`), so the
only difference is who renders the listing. Pages are compared as boto3 parses them, for plain
and delimiter listings, small page sizes (continuations inside and after folders), prefixes,
start-after and keys that need escaping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from bench import moto_seeded

BUCKET = "fast-list-parity"
KEYS = [
    "a.jpg",
    "a/b.jpg",
    "a/b/c.jpg",
    "a/b/d.jpg",
    "a/b.jpg.metadata.json",
    "a-b/x.jpg",
    "b/",
    "b/one.png",
    "c/d/e/f.jpg",
    "c/d/g.jpg",
    "c/z.jpg",
    "space %20 & <tag>.jpg",
    "\u00fcml\u00e4ut/\u00e9.jpg",
    "z",
    *(f"many/{i:03d}.jpg" for i in range(23)),
    *(f"dirs/{i:02d}/x.jpg" for i in range(12)),
]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Any, Any, moto_seeded.FastList]]:
    backend = moto_seeded._backend()
    backend.create_bucket(BUCKET, moto_seeded.REGION)
    for key in KEYS:
        backend.put_object(BUCKET, key, b"x" * (len(key) % 7 + 1), disable_notification=True)
    fast, fast_url, fast_list = moto_seeded.serve(0, True, [BUCKET])
    stock, stock_url, _ = moto_seeded.serve(0, False, [])
    assert fast_list is not None
    try:
        yield _client(fast_url), _client(stock_url), fast_list
    finally:
        fast.shutdown()
        stock.shutdown()


def _client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )


def _pages(client: Any, **kwargs: Any) -> list[dict[str, Any]]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, **kwargs):
        out.append(
            {
                "keys": [(o["Key"], o["Size"], o["ETag"]) for o in page.get("Contents", ())],
                "prefixes": [p["Prefix"] for p in page.get("CommonPrefixes", ())],
                "count": page["KeyCount"],
                "truncated": page["IsTruncated"],
            }
        )
    return out


CASES = [
    {},
    {"PaginationConfig": {"PageSize": 3}},
    {"Delimiter": "/"},
    {"Delimiter": "/", "PaginationConfig": {"PageSize": 1}},
    {"Delimiter": "/", "PaginationConfig": {"PageSize": 4}},
    {"Delimiter": "/", "Prefix": "c/"},
    {"Delimiter": "/", "Prefix": "a"},
    {"Delimiter": "/", "Prefix": "dirs/", "PaginationConfig": {"PageSize": 5}},
    {"Delimiter": "/", "StartAfter": "a/"},
    {"Prefix": "many/", "StartAfter": "many/010.jpg", "PaginationConfig": {"PageSize": 4}},
    {"Delimiter": "b", "PaginationConfig": {"PageSize": 2}},
]


@pytest.mark.parametrize("kwargs", CASES, ids=[str(c) for c in CASES])
def test_snapshot_listing_reads_like_stock_moto(servers: tuple[Any, Any, Any], kwargs: dict[str, Any]) -> None:
    fast, stock, _ = servers
    ours = _pages(fast, **kwargs)
    theirs = _pages(stock, **kwargs)
    assert [k for p in ours for k in p["keys"]] == [k for p in theirs for k in p["keys"]]
    assert [f for p in ours for f in p["prefixes"]] == [f for p in theirs for f in p["prefixes"]]
    # page boundaries too: keys and prefixes count alike against the page size
    assert [(p["count"], p["truncated"]) for p in ours] == [(p["count"], p["truncated"]) for p in theirs]


def test_snapshot_listing_is_really_used(servers: tuple[Any, Any, moto_seeded.FastList]) -> None:
    """The parity above means something only if the fast server answered those listings itself."""
    fast, _, fast_list = servers
    before = fast_list.served
    _pages(fast, Delimiter="/")
    _pages(fast)
    assert fast_list.served == before + 2
