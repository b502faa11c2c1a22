"""Listers that hand the rest of their key range to others: the same objects, the same sidecar
pairs, each object once, as one serial lister sees them; and cuts that never split a group."""

from __future__ import annotations

import bisect
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encord_ingest.models import ObjectRef
from integrations.storage import Source
from integrations.storage.base import ObjectInfo, from_start
from integrations.storage.s3 import just_below
from tasks.key_ranges import split_points
from tasks.listing import ListingOptions, ListingStats, iter_batches, iter_chunks


class MemoryStore:
    """A sorted key space with the listing calls of a cloud store, `list_from` included, as S3
    answers them: common prefixes apart from keys, MaxKeys counting both, and a start given as
    `S3Store.list_from` gives it (an exclusive StartAfter just below it, what lies between dropped
    by `from_start`), so pages can come back empty before the end. With `empty_pages` an empty
    page also follows every page (GCS: "the next page may be empty")."""

    scheme = "mem"
    bucket = "mem"

    def __init__(self, keys: list[str], *, empty_pages: bool = False) -> None:
        self.keys = sorted(set(keys))
        self.key_set = set(self.keys)
        self.empty_pages = empty_pages
        self.starts: list[str | None] = []
        self._lock = threading.Lock()

    def _refs(self, keys: list[str]) -> list[ObjectRef]:
        return [ObjectRef(key=k, size=1, etag=k, last_modified="t") for k in keys]

    def _names(self, prefix: str, after: str | None, delimited: bool) -> list[tuple[str, bool]]:
        """(name, is a common prefix) after `after`, in order."""
        names: list[tuple[str, bool]] = []
        at = max(bisect.bisect_left(self.keys, prefix), bisect.bisect_right(self.keys, after) if after else 0)
        for key in self.keys[at:]:
            if not key.startswith(prefix):
                break
            rest = key[len(prefix) :]
            name = (prefix + rest.split("/", 1)[0] + "/", True) if delimited and "/" in rest else (key, False)
            if not names or names[-1] != name:
                names.append(name)
        return names

    def list_from(
        self, prefix: str, start: str | None, *, delimited: bool = False, page_size: int = 1000
    ) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        with self._lock:
            self.starts.append(start)
        names = self._names(prefix, just_below(start) if start else None, delimited)
        for i in range(0, max(len(names), 1), page_size):
            page = names[i : i + page_size]
            prefixes = [name for name, common in page if common]
            yield from_start(prefixes, self._refs([name for name, common in page if not common]), start)
            if self.empty_pages:
                yield [], []

    def list_pages(self, prefix: str, *, page_size: int = 1000) -> Iterator[list[ObjectRef]]:
        for _, refs in self.list_from(prefix, None, page_size=page_size):
            if refs:
                yield refs

    def list_level(self, prefix: str) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        yield from self.list_from(prefix, None, delimited=True)

    def head(self, key: str) -> ObjectInfo:
        if key not in self.key_set:
            raise FileNotFoundError(key)
        return ObjectInfo(content_type="", metadata={})

    def url_for(self, key: str) -> str:
        return f"mem://{key}"


def listed(store: Any, prefix: str, fanout: int, page_size: int) -> tuple[list, list[str], int]:
    """(entries as (key, sidecar key), orphan keys, streams) of the whole listing."""
    source = Source(url="mem://", store=store, prefix=prefix)  # type: ignore[arg-type]
    pairs, orphans, streams = [], [], set()
    for chunk in iter_chunks(source, ListingOptions(page_size=page_size, fanout=fanout, split_page_seconds=0)):
        pairs += [(e.obj.key, e.sidecar.key if e.sidecar else None) for e in chunk.entries]
        orphans += [o.key for o in chunk.orphans]
        streams.add(chunk.stream)
    return pairs, orphans, len(streams)


# names with characters below "." (space, "!", "-", a control character) and above U+FFFF
NAME = st.text(alphabet="\x01 !-./0129az_\u00e9\U0001f600\U0010fffd", min_size=1, max_size=6)
SUFFIXES = st.sampled_from(
    ["", ".jpg", ".jpg.json", ".json", ".metadata.json", ".jpg.metadata.json", "-1.jpg", "/", " 2.jpg"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stems=st.lists(NAME, min_size=1, max_size=60),
    suffixes=st.lists(SUFFIXES, min_size=1, max_size=4),
    numbered=st.integers(0, 300),
    pad=st.sampled_from(["", "\U0010fffd", " ", "-"]),
    page_size=st.integers(2, 7),
    fanout=st.integers(2, 4),
    prefix=st.sampled_from(["", "d/", "d", "d/a."]),
    empty_pages=st.booleans(),
)
def test_split_listing_equals_one_serial_lister(
    stems: list[str],
    suffixes: list[str],
    numbered: int,
    pad: str,
    page_size: int,
    fanout: int,
    prefix: str,
    empty_pages: bool,
) -> None:
    keys = [prefix + stem + suffix for stem in stems for suffix in suffixes]
    keys += [f"{prefix}img_{i:04d}{pad}.jpg" for i in range(numbered)]  # long runs: these get split
    keys += [f"{prefix}img_{i:04d}.jpg.json" for i in range(0, numbered, 7)]
    keys += [f"{prefix}img_00{pad}{i}" for i in range(0, numbered, 3)]  # just below cuts such as img_01
    keys += [f"{prefix}frame-{i:03d}.png" for i in range(numbered // 2)] + [f"{prefix}frame", f"{prefix}frame.json"]
    store = MemoryStore(keys, empty_pages=empty_pages)
    serial = listed(store, prefix, 1, page_size)
    split = listed(store, prefix, fanout, page_size)
    assert sorted(split[0]) == sorted(serial[0])  # the same entries with the same sidecars
    assert len(split[0]) == len({k for k, _ in split[0]})  # each object once
    assert sorted(split[1]) == sorted(serial[1])
    used = {sidecar for _, sidecar in serial[0] if sidecar}
    assert len(serial[0]) + len(used) + len(serial[1]) == len(set(keys))  # nothing lost by the serial lister either


def test_a_range_whose_first_pages_hold_only_keys_below_its_start_lists_the_rest() -> None:
    """S3 lists from just below a range's start; the names between are dropped, so whole pages
    can come back empty before the range's end."""
    keys = [f"img_{i:04d}.jpg" for i in range(400)] + [f"img_00\U0010fffd{i:03d}" for i in range(20)]
    store = MemoryStore(keys)
    pages = list(store.list_from("", "img_01", page_size=5))
    assert pages[0] == ([], [])
    serial, split = listed(store, "", 1, 5), listed(store, "", 4, 5)
    assert split[2] > 1, "the level was not split"
    assert sorted(split[0]) == sorted(serial[0]) and len(serial[0]) == len(keys)


def test_a_prefix_inside_one_sidecar_group_is_not_cut() -> None:
    """Under `p/a.` every name is in the group `p/a.`: `p/a.json` is the sidecar of each `p/a.<x>`."""
    keys = ["p/a.json", *(f"p/a.img_{i:04d}" for i in range(300))]
    store = MemoryStore(keys)
    serial, split = listed(store, "p/a.", 1, 5), listed(store, "p/a.", 4, 5)
    assert sum(1 for _, sidecar in serial[0] if sidecar == "p/a.json") == 300 and not serial[1]
    assert sorted(split[0]) == sorted(serial[0]) and split[1] == serial[1]
    assert split_points("p/a.img_0000", "p/a.img_0009", "p/a.") == []


def test_a_flat_run_of_keys_is_split_into_ranges_that_start_where_they_should() -> None:
    keys = [f"img_{i:05d}.jpg" for i in range(3000)] + [f"img_{i:05d}.jpg.metadata.json" for i in range(0, 3000, 3)]
    store = MemoryStore(keys)
    pairs, orphans, streams = listed(store, "", 4, 50)
    assert sorted(k for k, _ in pairs) == sorted(k for k in keys if k.endswith(".jpg"))
    assert sum(1 for _, s in pairs if s) == 1000 and not orphans
    assert streams > 4, "the flat level was not split"
    started = sorted(s for s in store.starts if s)
    assert started and all(s.startswith("img_") and "." not in s for s in started)


def test_batches_of_split_ranges_stay_in_one_stream_and_are_counted_once() -> None:
    keys = [f"a/{i:05d}.jpg" for i in range(2000)]
    source = Source(url="mem://", store=MemoryStore(keys), prefix="a/")  # type: ignore[arg-type]
    stats = ListingStats()
    batches = list(iter_batches(source, ListingOptions(page_size=20, fanout=3, split_page_seconds=0), 64, stats))
    seen = [e.obj.key for b in batches for e in b]
    assert sorted(seen) == keys and stats.listed == 2000
    assert all(b[0].obj.key <= b[-1].obj.key for b in batches)


@given(
    first=st.text(alphabet="09az.-_/", max_size=8),
    rest=st.text(alphabet="09az.-_/", min_size=1, max_size=8),
    prefix=st.sampled_from(["", "p/", "p"]),
    members=st.lists(st.text(alphabet="09az.-_", max_size=6), min_size=1, max_size=5),
)
def test_cuts_lie_above_the_last_key_and_never_inside_a_sidecar_group(
    first: str, rest: str, prefix: str, members: list[str]
) -> None:
    low, high = sorted([prefix + first, prefix + first + rest])
    cuts = split_points(low, high, prefix, is_key=lambda _: True)
    assert cuts == sorted(set(cuts))
    assert all(c > high and c.startswith(prefix) and "." not in c[len(prefix) :] for c in cuts)
    for cut in cuts:  # a group is X and X.something; only an X the cut starts with could be split
        for stem in (cut[:i] for i in range(len(cut) + 1)):
            group = [stem, *(f"{stem}.{m}" for m in members)]
            assert len({g < cut for g in group}) == 1, (cut, group)


def test_s3_ranges_start_at_their_key_inclusive_and_split_a_flat_level(s3: Any, aws_in_environ: None) -> None:
    """S3's StartAfter is exclusive: a range starting at `img_02` must still list the key `img_02`."""
    from integrations.storage.s3 import S3Store

    bucket = f"ranges-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    keys = [f"flat/img_{i:03d}.jpg" for i in range(80)] + [f"flat/img_{i:03d}.jpg.json" for i in range(0, 80, 4)]
    keys += ["flat/img_02", "flat/img_01\U0010fffd.jpg", "flat/sub/x.jpg", "top.jpg"]
    keys += [f"flat/img_00\U0010fffd{i}" for i in range(6)]  # just below `flat/img_01`: a page of them
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    store = S3Store(bucket)
    pages = list(store.list_from("flat/", "flat/img_02", page_size=3))
    got = [r.key for _, refs in pages for r in refs]  # the key just below the start is listed, then dropped
    assert got[:3] == ["flat/img_02", "flat/img_020.jpg", "flat/img_020.jpg.json"]
    assert got == sorted(k for k in keys if k.startswith("flat/") and k >= "flat/img_02")
    assert next(store.list_from("flat/", "flat/img_01", page_size=5)) == ([], [])  # all below the start
    level = [p for ps, _ in store.list_from("flat/", "flat/s", delimited=True, page_size=2) for p in ps]
    assert level == ["flat/sub/"]

    source = Source(url=f"s3://{bucket}/", store=store, prefix="")
    serial = listed(store, "", 1, 5)  # type: ignore[arg-type]
    split = listed(store, "", 3, 5)  # type: ignore[arg-type]
    assert sorted(split[0]) == sorted(serial[0]) and len(serial[0]) == len(keys) - 20
    assert split[2] > 3, "the level was not split"
    assert source.id == f"s3://{bucket}/"


def test_a_level_whose_pages_come_fast_is_not_split() -> None:
    """Each range costs a request or two: below `split_page_seconds` per page it is not worth it."""
    store = MemoryStore([f"img_{i:05d}.jpg" for i in range(3000)])
    source = Source(url="mem://", store=store, prefix="")  # type: ignore[arg-type]
    streams = {chunk.stream for chunk in iter_chunks(source, ListingOptions(page_size=50, fanout=4))}
    assert streams == {0} and store.starts == [None]


@given(st.text(min_size=1, max_size=6) | st.sampled_from(["\x00", "a\x00", "a\ue000", "\U00010000"]))
def test_just_below_is_below_its_start_and_can_be_sent(start: str) -> None:
    """Any string below the start is correct (what lies between is dropped); it must encode as UTF-8."""
    below = just_below(start)
    assert below < start
    below.encode("utf-8")
