"""The per-page and per-batch shortcuts of the hot path give exactly what the general code gives.

Each shortcut is held against the code it stands in for, on generated keys that reach both sides
of its conditions: sidecar pairing of pages at once (`SidecarPairer._feed_apart`), manifest lines
straight from the listing for plain objects (`tasks.plain`, per entry and column-wise), path
layers column-wise (`MetadataPlan.cheap`), entries written without a JSON encoder
(`single_lines`), fingerprints column-wise (`MetadataPlan.fingerprints`) and the sliced `extension`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import date
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tasks.batch
import tasks.plain
import tasks.run
from encord_ingest.models import Entry, ObjectRef
from integrations.storage import Source
from integrations.storage.base import ObjectInfo, paged
from tasks.batch import process_batch
from tasks.classify import extension
from tasks.manifest import entry_size_estimate, single_lines
from tasks.metadata import MetadataPlan
from tasks.run import IngestParams, open_context
from tasks.sidecars import Paired, SidecarPairer

# Pieces that make keys meet each other's groups: shared stems, dots, dashes, folders, JSON files.
PARTS = st.sampled_from(["a", "b", "a.b", "cam", "x-y", "", "."])
EXTS = st.sampled_from([".jpg", ".JPG", ".png", ".mp4", ".wav", ".dcm", ".txt", "", ".json", ".metadata.json",
                        ".jpg.json", ".jpg.metadata.json", ".nii.gz", ".bin"])  # fmt: skip


def _key(folders: list[str], name: str, ext: str) -> str:
    return "".join(f"{f}/" for f in folders if f) + name + ext


KEYS = st.lists(st.builds(_key, st.lists(PARTS, max_size=2), PARTS, EXTS), min_size=1, max_size=60, unique=True).map(
    sorted
)


def _general(pairer: SidecarPairer, page: list[ObjectRef]) -> Paired:
    out = Paired()
    pairer._feed_each(page, out)
    return out


def _shape(out: Paired) -> tuple[list[tuple[str, str | None]], list[str]]:
    return [(e.obj.key, e.sidecar.key if e.sidecar else None) for e in out.entries], [o.key for o in out.orphans]


@settings(max_examples=300, deadline=None)
@given(KEYS, st.integers(min_value=1, max_value=9))
@example(["a/0.jpg", "a/1.jpg", "a/x.jpg", "a/x.png", "a/y.jpg", "a/z.jpg"], 3)  # a group across two pages
@example(["a/readme", "a/readme-2.jpg", "a/readme-3.jpg", "a/readme.json", "b.jpg"], 3)  # groups left open
def test_pairing_pages_at_once_equals_key_by_key(keys: list[str], page_size: int) -> None:
    refs = [ObjectRef(k, 1) for k in keys]
    fast, slow = SidecarPairer(), SidecarPairer()
    for page in paged(refs, page_size):
        assert _shape(fast.feed(page)) == _shape(_general(slow, page))
        assert {p: [r.key for r in g] for p, g in fast._open.items()} == {
            p: [r.key for r in g] for p, g in slow._open.items()
        }
    assert _shape(fast.finish()) == _shape(slow.finish())


def test_pairing_at_once_is_taken_for_plain_pages() -> None:
    """The equality above would hold trivially if the shortcut never ran."""
    page = [ObjectRef(f"site/cam/frame_{i:04d}.jpg", 1) for i in range(100)]
    pairer = SidecarPairer()
    out = Paired()
    assert pairer._feed_apart(page, out)
    assert len(out.entries) == 99 and list(pairer._open) == ["site/cam/frame_0099."]
    assert not pairer._feed_apart([*page, ObjectRef("site/cam/frame_0100.jpg.json", 1)], Paired())


def _old_extension(key: str) -> str:
    name = key.rsplit("/", 1)[-1].lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    return name.rsplit(".", 1)[1] if "." in name else ""


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZ./_-İßgzniNI")), max_size=20) | KEYS.map(lambda k: k[0]))
def test_extension_equals_the_split_version(key: str) -> None:
    assert extension(key) == _old_extension(key)


class _Store:
    """An in-memory bucket: sorted keys, sidecars that hold JSON, pages of seven."""

    scheme = "s3"
    bucket = "fast"

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes

    def list_pages(self, prefix: str, *, page_size: int = 1000) -> Iterator[list[ObjectRef]]:
        refs = [ObjectRef(k, n, f"e{n}", "", "t") for k, n in sorted(self.sizes.items()) if k.startswith(prefix)]
        yield from paged(refs, 7)

    def list_level(self, prefix: str) -> Iterator[tuple[list[str], list[ObjectRef]]]:
        raise AssertionError("fanout is 1 here")

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        return json.dumps({"from_sidecar": key, "n": len(key)}).encode()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return b""

    def head(self, key: str) -> ObjectInfo:
        return ObjectInfo("application/octet-stream", {})

    def download_to(self, key: str, path: Path) -> None:
        raise FileNotFoundError(key)

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def check_access(self, prefix: str) -> None:
        return None


def _report(sizes: dict[str, int], metadata: list[str], schema: Path, tmp: Path, *, plain: bool) -> dict[str, Any]:
    store = _Store(sizes)
    params = IngestParams(source="s3://fast/", metadata=metadata, schema_file=str(schema), fanout=1,
                          state_dir=str(tmp / ("plain" if plain else "full")))  # fmt: skip
    opened = mock.patch.object(tasks.run, "open_source", lambda url, **_: Source(url=url, store=store, prefix=""))
    off = mock.patch.object(tasks.batch, "plain_lines", lambda ctx, entries, observed: ([None] * len(entries), entries))
    with (
        opened,
        off if not plain else contextlib.nullcontext(),
        open_context(params, run_id="r", uploader_factory=None, use_ledger=False) as ctx,
    ):
        pairer = SidecarPairer()
        entries = [e for page in store.list_pages("") for e in pairer.feed(page).entries]
        entries += pairer.finish().entries
        report = process_batch(ctx, 1, entries)
    observed = {k: (s.count, sorted(s.types), sorted(s.values)) for k, s in report.observed.keys.items()}
    return {
        "manifests": report.manifests,
        "counts": (report.listed, report.skipped, report.failed, report.staged),
        "skip_reasons": report.skip_reasons,
        "observed": observed,
    }


SPECS = st.sampled_from(
    [
        [r"path:^(?P<site>[^/]*)/(?P<cam>[^/.]*)", "set:team=b"],
        ["sidecar", r"path:(?P<n>\d)?"],
        [r"path:(?P<site>a)", "set:bad key!=1"],  # a key Encord refuses: the full path dead-letters it
        [],
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(KEYS, st.lists(st.integers(min_value=0, max_value=3), min_size=60, max_size=60), SPECS)
def test_plain_lines_equal_the_full_path(
    tmp_path: Path, keys: list[str], sizes: list[int], metadata: list[str]
) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text("keys:\n  cam: number\n  team: varchar\n")  # `cam` from the path is often not a number
    data = {k: sizes[i % len(sizes)] for i, k in enumerate(keys)}
    assert _report(data, metadata, schema, tmp_path, plain=True) == _report(
        data, metadata, schema, tmp_path, plain=False
    )


def test_plain_lines_carry_plain_batches(tmp_path: Path) -> None:
    """A batch of plain objects never reaches the per-object path (else the parity above says little)."""
    schema = tmp_path / "schema.yaml"
    schema.write_text("keys: {}\n")
    data = {f"site{i % 3}/cam/f{i:03d}.jpg": 5 for i in range(50)}
    data["site0/cam/empty.jpg"] = 0
    full: list[list[str]] = []
    prepare = tasks.batch._Batch.prepare

    def spy(self: Any) -> Any:
        full.append([e.obj.key for e in self.entries])
        return prepare(self)

    with mock.patch.object(tasks.batch._Batch, "prepare", spy):
        out = _report(data, [r"path:^(?P<site>[^/]+)/"], schema, tmp_path, plain=True)
    assert full == [["site0/cam/empty.jpg"]], "only the empty object takes the per-object path"
    assert out["counts"] == (51, 1, 0, 0)
    assert sum(len(json.loads(text).get("images", [])) for text, _ in out["manifests"]) == 50


# Names of plain objects, with what JSON must escape (quote, backslash, control characters) and
# what it passes through (non-ASCII), and extensions the column-wise lines take as they stand or not.
PLAIN_NAMES = st.sampled_from(["a", "b.c", 'q"t', "back\\slash", "tab\tx", "é", "日本", "x y", "cam01"])
PLAIN_EXTS = st.sampled_from([".jpg", ".jpg", ".jpg", ".png", ".mp4", ".JPG", ".nii.gz", ".pdf"])
PLAIN_KEYS = st.lists(
    st.builds(_key, st.lists(PLAIN_NAMES, max_size=2), PLAIN_NAMES, PLAIN_EXTS), min_size=1, max_size=40, unique=True
).map(sorted)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(PLAIN_KEYS, st.sampled_from([[r"path:^(?P<site>[^/]+)/", "set:team=b"], [r"path:(?P<n>\d)?"], []]))
@example(["a/x.jpg", "a/y.jpg", "b/z.jpg"], [r"path:^(?P<site>[^/]+)/", "set:team=b"])  # one extension
@example(['a/q"t.jpg', "a/\u00e9.png"], [r"path:(?P<n>\d)?"])  # escapes, two sections
def test_column_wise_plain_lines_equal_the_full_path(tmp_path: Path, keys: list[str], metadata: list[str]) -> None:
    """Batches of plain objects only take `tasks.plain._all_plain`: its lines are the full path's."""
    schema = tmp_path / "schema.yaml"
    schema.write_text("keys:\n  team: varchar\n")
    data = dict.fromkeys(keys, 3)
    taken: list[bool] = []
    real = tasks.plain._all_plain

    def spy(*args: Any) -> Any:
        out = real(*args)
        taken.append(out is not None)
        return out

    with mock.patch.object(tasks.plain, "_all_plain", spy):
        fast = _report(data, metadata, schema, tmp_path, plain=True)
    assert fast == _report(data, metadata, schema, tmp_path, plain=False)
    lowercase_single = all(extension(k) in ("jpg", "png", "mp4", "pdf") and k.rpartition(".")[2] == extension(k)
                           for k in keys)  # fmt: skip
    assert taken == [lowercase_single], "every batch of plain lower-case extensions goes column-wise"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.builds(_key, st.lists(PARTS, max_size=3), PARTS, EXTS), min_size=1, max_size=40),
    st.sampled_from(["", "a/", "a.b/", "cam"]),
    st.sampled_from([r"(?P<site>[^/]+)/(?P<cam>[^/]+)/", r"(?P<n>[ab])?", r"^(?P<top>a)"]),
)
def test_path_layers_column_wise_equal_one_search_per_key(keys: list[str], prefix: str, regex: str) -> None:
    """`MetadataPlan.cheap` for one path regex: each key's layer is what its own search gives (the
    relative key first, then the full key), and equal groups share one Cheap."""
    plan = MetadataPlan.build([f"path:{regex}"], url_base="s3://b/")
    source = Source(url=f"s3://b/{prefix}", store=_Store({}), prefix=prefix)
    cheaps = plan.cheap([Entry(ObjectRef(k, 1)) for k in keys], source.relative)
    pattern = re.compile(regex)
    by_groups: dict[Any, Any] = {}
    for key, cheap in zip(keys, cheaps, strict=True):
        m = pattern.search(source.relative(key)) or pattern.search(key)
        expected = {k: v for k, v in m.groupdict().items() if v is not None} if m else {}
        assert cheap.layers == [expected] and cheap.problem is None
        assert by_groups.setdefault(m.groups() if m else None, cheap) is cheap


SPECS = st.lists(
    st.sampled_from([r"path:(?P<site>[^/]+)/", r"path:(?P<n>[ab])?", "sidecar", "object", "set:team=x", "set:n=2"]),
    max_size=3,
)
REFS = st.builds(
    ObjectRef,
    st.builds(_key, st.lists(PARTS, max_size=2), PARTS, EXTS),
    st.integers(0, 10**12),
    st.text(max_size=8),
    st.just(""),
    st.sampled_from(["", "2026-01-01T00:00:00+00:00", "t\x1f"]),
    st.just(""),
    st.sampled_from(["", "", "", "tags-1"]),
)


@settings(max_examples=300, deadline=None)
@given(SPECS, st.lists(st.tuples(REFS, st.none() | REFS), min_size=1, max_size=30), st.text(max_size=4))
def test_fingerprints_column_wise_equal_one_per_entry(specs: list[str], pairs: list[Any], salt: str) -> None:
    """`MetadataPlan.fingerprints` hashes exactly the text `fingerprint` hashes for each entry (the
    ledger's fingerprints must not change), whether or not tags or sidecars send it the long way."""
    plan = MetadataPlan.build(specs, url_base="s3://b/")
    entries = [Entry(obj, sidecar) for obj, sidecar in pairs]
    cheap = plan.cheap(entries, lambda key: key)
    one_by_one = [plan.fingerprint(e, c, salt) for e, c in zip(entries, cheap, strict=True)]
    assert plan.fingerprints(entries, cheap, salt) == one_by_one


def test_fingerprints_go_column_wise_without_tags_or_counted_sidecars() -> None:
    """The column-wise hashes are taken when no entry has tags and no sidecar counts, else not."""
    plan = MetadataPlan.build([r"path:(?P<site>[^/]+)/", "sidecar"], url_base="s3://b/")
    plain = [Entry(ObjectRef(f"s{i % 3}/{i}.jpg", i, f"e{i}", "", "t")) for i in range(50)]
    tagged = [*plain[:-1], Entry(ObjectRef("s1/x.jpg", 1, "e", "", "t", "", "tags-1"))]
    paired = [*plain[:-1], Entry(ObjectRef("s1/y.jpg", 1), ObjectRef("s1/y.json", 2))]
    expected = {id(plain): True, id(tagged): False, id(paired): False}
    for entries in (plain, tagged, paired):
        cheap = plan.cheap(entries, lambda key: key)
        reference = [plan.fingerprint(e, c, "salt") for e, c in zip(entries, cheap, strict=True)]
        with mock.patch.object(MetadataPlan, "fingerprint", wraps=plan.fingerprint) as per_entry:
            assert plan.fingerprints(entries, cheap, "salt") == reference
        assert (per_entry.call_count == 0) is expected[id(entries)]


@pytest.mark.parametrize(("max_sample", "by_rowid"), [(50_000, True), (7, True), (50_000, False)])
def test_table_lookups_by_row_range_equal_a_plain_dict_of_the_file(
    tmp_path: Path, max_sample: int, by_rowid: bool
) -> None:
    """`MetadataTable.lookup` (position ranges from a sample of keys - every 64th, or every ~700th -
    by rowid or by an explicit rank; Arrow columns for plain types, rows otherwise) gives what a
    dict built from the file gives: for contiguous, sparse and far-apart batches, unsorted ones,
    keys beyond both ends, duplicate keys and NULL cells, a walk of consecutive batches served from
    windows read ahead, and more shards walking at once than windows are kept."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    import tasks.tables
    from tasks.tables import DuplicateRows, MetadataTable

    rng = random.Random(5)
    names = (f"{rng.choice('abc')}/{rng.randrange(10**6):06d}{rng.choice(['.jpg', '', 'é.png'])}" for _ in range(5000))
    keys = sorted(set(names))
    dupes = set(rng.sample(keys, 30))
    rows = [k for k in keys for _ in range(2 if k in dupes else 1)]
    n = len(rows)
    score = [None if i % 17 == 0 else i / 4 for i in range(n)]
    plain = pa.table({"key": rows, "site": [f"s{i % 5}" for i in range(n)], "score": score, "n": list(range(n))})
    typed = plain.append_column("day", pa.array([None if i % 11 == 0 else date(2026, 1, 1 + i % 28) for i in range(n)]))
    asks = [keys[100:1100], keys[::5][:1000], keys[:10] + keys[-10:], rng.sample(keys, 700), keys[4000:], keys[:3]]
    asks += [["0-before", *keys[:50], "zzz-after"], ["only-missing"], [keys[0]], [keys[-1]]]
    walk = [keys[i : i + 90] for i in range(0, len(keys), 90)]  # a listing's batches, served from read-ahead
    starts = [0, 1000, 2000, 3000, 4000, 4500]  # six shards walking their parts of the table at once
    asks += walk + [keys[s + i : s + i + 40] for i in range(0, 400, 40) for s in starts]

    def comparable(got: dict[str, Any]) -> dict[str, Any]:
        return {k: ("duplicate", v.count) if isinstance(v, DuplicateRows) else v for k, v in got.items()}

    with (
        mock.patch.object(tasks.tables, "MAX_SAMPLE", max_sample),
        mock.patch.object(tasks.tables, "MAX_WINDOW_ROWS", 600),  # windows of a few strides: many of them
        mock.patch.object(MetadataTable, "_stored_in_key_order", return_value=False) if not by_rowid else nullcontext(),
    ):
        for label, table in (("plain", plain), ("typed", typed)):
            path = tmp_path / f"{label}.parquet"
            pq.write_table(table, path)
            expected_all: dict[str, Any] = {}
            for record in table.to_pylist():
                key = record.pop("key")
                expected_all[key] = (
                    ("duplicate", 2) if key in dupes else {c: v for c, v in record.items() if v is not None}
                )
            meta = MetadataTable(path, label=label)
            try:
                assert meta._by_arrow is (label == "plain")
                assert meta._order == ("rowid" if by_rowid else "__row")
                with mock.patch.object(tasks.tables, "_Window", side_effect=tasks.tables._Window) as windows:
                    got = [comparable(meta.lookup(ask)) for ask in asks]
                assert windows.call_count < len(asks) - len(walk) // 2  # the walk reads ahead
                for ask, one in zip(asks, got, strict=True):
                    assert one == {k: expected_all[k] for k in ask if k in expected_all}, label
                if label == "plain":  # the row-by-row read gives the same as the Arrow one
                    meta._by_arrow = False
                    meta._windows.clear()
                    assert [comparable(meta.lookup(ask)) for ask in asks] == got
            finally:
                meta.close()


def test_table_layers_column_wise_equal_key_by_key(tmp_path: Path) -> None:
    """With a table, a path regex and a constant, `cheap` (a column of layers per spec) gives each
    key the layers worked out for it alone from the file; a duplicated key gets its problem."""
    table = tmp_path / "t.csv"
    rows = [f"s{i % 3}/c{i % 2}/{i:04d}.jpg,{i % 7},{'' if i % 5 == 0 else i}" for i in range(3000)]
    table.write_text("key,site,n\n" + "\n".join([*rows, "s0/c1/0003.jpg,dup,1"]) + "\n")
    regex = r"(?P<top>s\d)/(?P<cam>c\d)?"
    specs = [f"table:{table}", f"path:{regex}", "set:team=x", "sidecar"]
    plan = MetadataPlan.build(specs, url_base="s3://b/")
    source = Source(url="s3://b/s1/", store=_Store({}), prefix="s1/")
    cells = {r.split(",")[0]: dict(zip(["site", "n"], r.split(",")[1:], strict=True)) for r in rows}

    def one_by_one(key: str) -> list[Any]:
        m = re.search(regex, source.relative(key)) or re.search(regex, key)
        path = {k: v for k, v in m.groupdict().items() if v is not None} if m else {}
        return [{k: v for k, v in cells.get(key, {}).items() if v}, path, {"team": "x"}, None]

    try:
        listed = [r.split(",")[0] for r in rows[::3] if not r.startswith("s0/c1/0003.jpg")]  # the duplicate: below
        keys = sorted([*listed, "missing.jpg", "s1/x/no-cam.jpg"])
        for batch in (keys[:400], keys[400:]):
            by_column = plan.cheap([Entry(ObjectRef(k, 1)) for k in batch], source.relative)
            assert [c.layers for c in by_column] == [one_by_one(k) for k in batch]
            assert all(c.problem is None for c in by_column)
        with_dupe = plan.cheap([Entry(ObjectRef(k, 1)) for k in ["s0/c1/0003.jpg", "s0/c0/0006.jpg"]], source.relative)
        assert with_dupe[0].problem is not None and with_dupe[0].problem.rule == "table.duplicate_key"
        assert with_dupe[0].layers == [{}, {"top": "s0", "cam": "c1"}, {"team": "x"}, None]
        assert with_dupe[1].problem is None and with_dupe[1].layers[0] == {"site": "6", "n": "6"}
    finally:
        plan.close()


def test_single_lines_are_json_whatever_the_strings() -> None:
    """Entries written without an encoder (strings that need no escaping) and with one read back the same."""
    urls = ["s3://b/plain.jpg", 's3://b/q"t.jpg', "s3://b/back\\slash.jpg", "s3://b/ctl\x01.jpg", "s3://b/é.jpg"]
    urls += [
        "s3://b/del\x7f.jpg",
        "s3://b/tab\t.jpg",
        "s3://b/line\n.jpg",
        "s3://b/unit\x1f.jpg",
        "s3://b/ls\u2028.jpg",
    ]
    titles = [u.removeprefix("s3://b/") for u in urls]
    for i in range(len(urls)):  # each alone (the fast way whenever it can), then all together
        for u, t in ((urls[i : i + 1], titles[i : i + 1]), (urls, titles)):
            lines = single_lines(["images"] * len(u), u, t, ['{"k":1}'] * len(u))
            assert [json.loads(text) for _, text, _ in lines] == [
                {"objectUrl": url, "title": title, "clientMetadata": {"k": 1}} for url, title in zip(u, t, strict=True)
            ]
            assert [size for *_, size in lines] == list(map(entry_size_estimate, u, t, ['{"k":1}'] * len(u)))


def test_a_manifest_that_cannot_be_written_stops_the_run(tmp_path: Path) -> None:
    """Manifests go to disk on a writer thread; its failure must still reach the caller."""
    from bench.synthetic import synthetic_sources, synthetic_url
    from tasks.manifest_only import write_manifests

    real = Path.write_text
    calls: list[str] = []

    def failing(self: Path, *args: Any, **kwargs: Any) -> int:
        calls.append(self.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    params = IngestParams(source=synthetic_url(20_000), state_dir=str(tmp_path / "state"), fanout=1)
    with synthetic_sources(), mock.patch.object(Path, "write_text", failing):
        try:
            write_manifests(params, tmp_path / "out")
        except OSError as exc:
            assert exc.errno == 28
        else:
            raise AssertionError("the failed write went unnoticed")
    assert len(calls) <= 7, "of 20 manifests, the run stopped soon after the failure (writes go at most 4 ahead)"
