"""Unit tests of the plain stage functions: no server needed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from encord_ingest.errors import ConfigError, UsageError
from encord_ingest.models import Entry, Item, ItemKind, ObjectRef
from integrations.storage import open_source, parse_source
from tasks.classify import by_content_type, by_extension
from tasks.filters import KeyFilter
from tasks.listing import ListingOptions, ListingStats, iter_batches
from tasks.manifest import build_manifest, entry_size, manifest_entry, split_by_limits
from tasks.metadata import MetadataError, MetadataPlan, parse_sidecar
from tasks.schema import load_schema, parse_schema
from tasks.sidecars import SidecarPairer, pair_pages
from tasks.tables import DuplicateRows, MetadataTable
from tasks.validate import MAX_METADATA_BYTES, validate_metadata


def refs(*keys: str) -> list[ObjectRef]:
    return [ObjectRef(k, 1, f"e-{k}") for k in keys]


def paired(keys: list[str], page: int = 2) -> tuple[dict[str, str | None], list[str]]:
    keys = sorted(keys)
    pages = [refs(*keys[i : i + page]) for i in range(0, len(keys), page)]
    entries: dict[str, str | None] = {}
    orphans: list[str] = []
    for out in pair_pages(pages):
        for e in out.entries:
            entries[e.obj.key] = e.sidecar.key if e.sidecar else None
        orphans += [o.key for o in out.orphans]
    return entries, orphans


class TestSidecars:
    def test_all_three_names_and_most_specific_wins(self) -> None:
        entries, orphans = paired(
            [
                "d/a.jpg", "d/a.json",
                "d/b.jpg", "d/b.jpg.json",
                "d/c.png", "d/c.png.metadata.json", "d/c.png.json", "d/c.json",
                "d/e.tif",
            ],
            page=1,
        )  # fmt: skip
        assert entries == {
            "d/a.jpg": "d/a.json",
            "d/b.jpg": "d/b.jpg.json",
            "d/c.png": "d/c.png.metadata.json",
            "d/e.tif": None,
        }
        assert sorted(orphans) == ["d/c.json", "d/c.png.json"]

    def test_sidecars_never_become_entries_across_page_boundaries(self) -> None:
        keys = [f"x/{i:05d}.jpg" for i in range(200)] + [f"x/{i:05d}.jpg.json" for i in range(0, 200, 3)]
        for page in (1, 7, 1000):
            entries, orphans = paired(keys, page)
            assert len(entries) == 200 and not orphans
            assert all((v is not None) == (int(k[2:7]) % 3 == 0) for k, v in entries.items())

    def test_extensionless_object_and_tricky_neighbours(self) -> None:
        entries, orphans = paired(["r/README", "r/README-x.txt", "r/README.json", "r/a.b.jpg", "r/a.b.json"])
        assert entries == {"r/README": "r/README.json", "r/README-x.txt": None, "r/a.b.jpg": "r/a.b.json"}
        assert orphans == []

    def test_open_groups_stay_few(self) -> None:
        pairer = SidecarPairer()
        for i in range(5000):
            pairer.feed(refs(f"k/{i:06d}.jpg"))
            assert len(pairer._open) <= 2


class TestFilters:
    @pytest.mark.parametrize(
        ("include", "exclude", "key", "ok"),
        [
            (["*.jpg"], [], "a/b/c.jpg", True),
            (["*.jpg"], [], "a/b/c.png", False),
            (["a/*.jpg"], [], "a/b/c.jpg", False),
            (["a/**/*.jpg"], [], "a/b/c.jpg", True),
            (["a/**"], [], "a/b/c.jpg", True),
            ([], ["tmp/**"], "tmp/x.jpg", False),
            ([], ["*.json"], "x.jpg", True),
            (["img_[0-9]*"], [], "img_7.jpg", True),
            (["img_[!0-9]*"], [], "img_7.jpg", False),
        ],
    )
    def test_globs(self, include: list[str], exclude: list[str], key: str, ok: bool) -> None:
        assert KeyFilter.build(include, exclude).accepts(key) is ok


class TestClassify:
    def test_extensions_and_content_types(self) -> None:
        assert by_extension("a/B.JPG") == ItemKind.IMAGE
        assert by_extension("v.mov") == ItemKind.VIDEO
        assert by_extension("s.nii.gz") == ItemKind.NIFTI
        assert by_extension("x.bin") is None
        assert by_content_type("image/png; charset=x") == ItemKind.IMAGE
        assert by_content_type("application/octet-stream") is None
        assert by_content_type("image/svg+xml") is None


class TestSchemaAndValidation:
    schema = parse_schema(
        {
            "keys": {
                "site": {"type": "enum", "values": ["north", "south"]},
                "captured_at": "datetime",
                "camera.serial": "varchar",
                "notes": "long_string",
                "reviewed": "boolean",
                "score": "number",
                "sample_id": "uuid",
                "clip": {"type": "embedding", "size": 3},
            }
        }
    )

    def test_coercion(self) -> None:
        out, v = validate_metadata(
            {
                "site": "north",
                "captured_at": "2024-05-01T10:00:00+02:00",
                "camera.serial": 1234,
                "reviewed": "yes",
                "score": "42",
                "sample_id": "12345678-1234-5678-1234-567812345678",
                "clip": "[0.1, 0.2, 0.3]",
                "free": {"nested": [1, 2]},
            },
            self.schema,
        )
        assert v is None
        assert out["score"] == 42 and out["reviewed"] is True and out["camera.serial"] == "1234"
        assert out["clip"] == [0.1, 0.2, 0.3] and out["free"] == {"nested": [1, 2]}
        assert self.schema.keys["notes"].type == "text"

    @pytest.mark.parametrize(
        ("metadata", "rule"),
        [
            ({"site": "west"}, "enum.value"),
            ({"score": "high"}, "type.number"),
            ({"score": float("nan")}, "type.number"),
            ({"captured_at": "31/12/2024"}, "type.datetime"),
            ({"sample_id": "nope"}, "type.uuid"),
            ({"reviewed": "maybe"}, "type.boolean"),
            ({"clip": [1, 2]}, "embedding.size"),
            ({"clip": [1, "2", 3]}, "embedding.type"),
            ({"bad key!": 1}, "key.charset"),
            ({"café": 1}, "key.charset"),
            ({"$x": 1}, "key.charset"),
            ({"keyframes": 1}, "key.charset"),
            ({"free": "a\x00b"}, "jsonb.nul"),
            ({"free": float("inf")}, "jsonb.number"),
            ({"camera.serial": {"a": 1}}, "type.varchar"),
        ],
    )
    def test_violations_name_key_rule_and_type(self, metadata: dict, rule: str) -> None:
        out, v = validate_metadata(metadata, self.schema)
        assert v is not None and v.rule == rule and out == {}
        key = next(iter(metadata))
        assert v.key == key or rule == "key.charset"

    def test_size_limit_is_exact(self) -> None:
        overhead = len('{"n":""}')
        _, v = validate_metadata({"n": "x" * (MAX_METADATA_BYTES - overhead)})
        assert v is None
        _, v = validate_metadata({"n": "x" * (MAX_METADATA_BYTES - overhead + 1)})
        assert v is not None and v.rule == "size.limit"

    def test_deep_nesting_is_refused_not_crashing(self) -> None:
        deep: dict = {}
        cur = deep
        for _ in range(5000):
            cur["a"] = {}
            cur = cur["a"]
        _, v = validate_metadata({"deep": deep})
        assert v is not None and v.rule == "jsonb.depth"

    def test_schema_file_errors(self, tmp_path: Path) -> None:
        p = tmp_path / "s.yaml"
        for text in ("keys:\n  a: {type: enum, values: []}\n", "keys:\n  a: number\n  a: text\n", "nokeys: 1\n"):
            p.write_text(text)
            with pytest.raises(ConfigError):
                load_schema(p)
        with pytest.raises(ConfigError, match="does not exist"):
            load_schema(tmp_path / "missing.yaml")


class TestSidecarParsing:
    @pytest.mark.parametrize(
        ("raw", "rule"),
        [
            (b"{not json", "sidecar.json"),
            (b"[1]", "sidecar.not_object"),
            (b'"x"', "sidecar.not_object"),
            (b'{"a": 1, "a": 2}', "sidecar.duplicate_key"),
            (b'{"a": NaN}', "sidecar.nan"),
            (b'{"a": Infinity}', "sidecar.nan"),
            (b"\xff\xfe{}", "sidecar.encoding"),
            (b"[" * 100000, "sidecar.depth"),
        ],
    )
    def test_rejections(self, raw: bytes, rule: str) -> None:
        with pytest.raises(MetadataError) as info:
            parse_sidecar(raw)
        assert info.value.rule in (rule, "sidecar.json")
        if rule != "sidecar.depth":
            assert info.value.rule == rule

    def test_bom_and_nested_duplicates(self) -> None:
        assert parse_sidecar(b'\xef\xbb\xbf{"a": {"b": 1}}') == {"a": {"b": 1}}
        with pytest.raises(MetadataError):
            parse_sidecar(b'{"a": {"b": 1, "b": 2}}')


class TestTables:
    def test_csv_lookup_by_key_and_duplicates(self, tmp_path: Path) -> None:
        p = tmp_path / "t.csv"
        rows = ["key,site,score"] + [f"k/{i:06d}.jpg,s{i % 3},{i}" for i in range(20000)] + ["k/000005.jpg,dup,1"]
        p.write_text("\n".join(rows) + "\n")
        table = MetadataTable(p, label="t.csv")
        try:
            keys = [f"k/{i:06d}.jpg" for i in range(0, 10)] + ["k/missing.jpg"]
            got = table.lookup(keys)
            assert got["k/000001.jpg"] == {"site": "s1", "score": "1"}
            assert isinstance(got["k/000005.jpg"], DuplicateRows)
            assert "k/missing.jpg" not in got
            far = table.lookup(["k/000000.jpg", "k/019999.jpg"])
            assert set(far) == {"k/000000.jpg", "k/019999.jpg"}
        finally:
            table.close()

    def test_url_column_jsonl_and_parquet(self, tmp_path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        j = tmp_path / "t.jsonl"
        j.write_text("\n".join(json.dumps({"url": f"s3://b/k{i}", "n": i}) for i in range(5)) + "\n")
        table = MetadataTable(j, label="t.jsonl", url_base="s3://b/")
        assert table.lookup(["k3"]) == {"k3": {"n": 3}}
        table.close()
        q = tmp_path / "t.parquet"
        pq.write_table(pa.table({"key": ["a", "b"], "flag": [True, False]}), q)
        table = MetadataTable(q, label="t.parquet")
        assert table.lookup(["b"]) == {"b": {"flag": False}}
        table.close()

    def test_bad_tables(self, tmp_path: Path) -> None:
        p = tmp_path / "t.csv"
        p.write_text("name,site\na,b\n")
        with pytest.raises(ConfigError, match="'key' or 'url'"):
            MetadataTable(p, label="t.csv")
        p.write_text("key,bad col!\na,b\n")
        with pytest.raises(ConfigError, match="bad col"):
            MetadataTable(p, label="t.csv")
        p.write_bytes(b"key,site\na,\xff\xfe\n")
        with pytest.raises(ConfigError):
            MetadataTable(p, label="t.csv")


class TestManifest:
    def item(self, kind: ItemKind, key: str, metadata: dict | None = None, urls: list[str] | None = None) -> Item:
        url = f"s3://b/{key}"
        return Item(kind, key, url, key, [Entry(ObjectRef(key, 1))], urls or [url], metadata or {})

    def test_documented_vocabulary(self) -> None:
        m = build_manifest(
            [
                self.item(ItemKind.IMAGE, "a.jpg", {"x": 1}),
                self.item(ItemKind.VIDEO, "v.mp4"),
                self.item(ItemKind.AUDIO, "s.wav"),
                self.item(ItemKind.IMAGE_SEQUENCE, "g", urls=["s3://b/g/1.jpg", "s3://b/g/2.jpg"]),
            ]
        )
        assert m["images"] == [{"objectUrl": "s3://b/a.jpg", "title": "a.jpg", "clientMetadata": {"x": 1}}]
        assert m["videos"][0]["objectUrl"] == "s3://b/v.mp4" and m["audio"][0]["title"] == "s.wav"
        assert m["image_groups"] == [
            {"title": "g", "createVideo": True, "objectUrl_0": "s3://b/g/1.jpg", "objectUrl_1": "s3://b/g/2.jpg",
             "clientMetadata": {}}
        ]  # fmt: skip
        assert m["skip_duplicate_urls"] is True

    def test_rendered_text_equals_the_encoded_manifest(self) -> None:
        from tasks.manifest import render_manifest
        from tasks.validate import validate_and_encode

        items = []
        for i, (kind, meta) in enumerate(
            [(ItemKind.IMAGE, {"b": 1, "a": 'ü"q'}), (ItemKind.VIDEO, {}), (ItemKind.IMAGE_GROUP, {"x": [1, 2]})]
        ):
            item = self.item(kind, f'k{i} "quoted" ß.jpg', meta, urls=["s3://b/g/1.jpg"] if i == 2 else None)
            item.extra["metadata_json"] = validate_and_encode(meta)[2]
            items.append(item)
        text, count = render_manifest(items)
        assert count == 3
        assert json.loads(text) == json.loads(json.dumps(build_manifest(items)))
        assert render_manifest([])[0] == '{"skip_duplicate_urls":true}'

    def test_split_by_count_and_bytes(self) -> None:
        items = [self.item(ItemKind.IMAGE, f"{i}.jpg", {"pad": "x" * random.randint(0, 3000)}) for i in range(500)]
        limit = 64 * 1024
        chunks = list(split_by_limits(items, max_items=100, max_bytes=limit))
        assert sum(len(c) for c in chunks) == 500
        for c in chunks:
            assert len(c) <= 100
            assert sum(entry_size(manifest_entry(i)) for i in c) <= limit
        big = self.item(ItemKind.IMAGE, "big.jpg", {"pad": "x" * 100_000})
        assert [len(c) for c in split_by_limits([big, items[0]], max_bytes=limit)] == [1, 1]


class TestSourcesAndListing:
    def test_source_urls(self) -> None:
        assert parse_source("s3://bkt/a/b").prefix == "a/b"
        assert parse_source("/x/y").scheme == "file"
        with pytest.raises(UsageError):
            parse_source("ftp://x/y")
        with pytest.raises(UsageError):
            parse_source("s3:///nobucket")

    def _tree(self, root: Path, n_dirs: int, per_dir: int) -> set[str]:
        keys = set()
        for d in range(n_dirs):
            for i in range(per_dir):
                p = root / f"d{d:02d}" / f"f{i:03d}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"x")
                keys.add(p.relative_to(root).as_posix())
                if i % 2:
                    (root / f"d{d:02d}" / f"f{i:03d}.json").write_text("{}")
        (root / "top.png").write_bytes(b"x")
        keys.add("top.png")
        return keys

    @pytest.mark.parametrize("fanout", [1, 4])
    def test_fanout_lists_everything_once_in_contiguous_batches(self, tmp_path: Path, fanout: int) -> None:
        keys = self._tree(tmp_path, 9, 30)
        source = open_source(str(tmp_path))
        stats = ListingStats()
        seen: list[str] = []
        with_sidecar = 0
        for batch in iter_batches(source, ListingOptions(fanout=fanout, page_size=7), 11, stats):
            assert len(batch) <= 11
            if fanout > 1:
                assert len({b.obj.key.split("/")[0] for b in batch}) == 1, "a batch comes from one lister stream"
            seen += [e.obj.key for e in batch]
            with_sidecar += sum(1 for e in batch if e.sidecar)
        assert sorted(seen) == sorted(keys) and len(seen) == len(keys)
        assert with_sidecar == 9 * 15 and stats.orphans == 0

    def test_metadata_plan_spec_errors(self) -> None:
        for spec in ("path:(no-group)", "path:(?P<x>", "nope", "set:=1", "table:"):
            with pytest.raises(UsageError):
                MetadataPlan.build([spec], url_base="s3://b/")


def test_s3_contents_reader_handles_field_order_escapes_and_url_encoding() -> None:
    from integrations.storage.s3_contents import parse_contents

    body = (
        '<?xml version="1.0"?><ListBucketResult><IsTruncated>true</IsTruncated>'
        "<Contents><Size>12</Size><Key>a%2Bb+c.jpg</Key><ETag>&quot;e1&quot;</ETag>"
        "<LastModified>2026-01-01T00:00:00.000Z</LastModified><StorageClass>STANDARD</StorageClass></Contents>"
        "<Contents><Key>x%26y%3C.png</Key><LastModified>t</LastModified><ETag>&quot;e2&quot;</ETag>"
        "<Size>0</Size></Contents><EncodingType>url</EncodingType>"
        "<NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"
    )
    refs, rest = parse_contents(body)
    assert [(r.key, r.size, r.etag, r.last_modified) for r in refs] == [
        ("a+b c.jpg", 12, "e1", "2026-01-01T00:00:00.000Z"),
        ("x&y<.png", 0, "e2", "t"),
    ]
    assert "<Contents>" not in rest and "<NextContinuationToken>tok</NextContinuationToken>" in rest
    plain, _ = parse_contents(body.replace("<EncodingType>url</EncodingType>", "").replace("%2B", "&amp;&#x80;"))
    assert plain[0].key == "a&\x80b+c.jpg", "without EncodingType=url only XML escapes are undone"


def test_s3_contents_reader_one_pass_and_block_by_block_agree() -> None:
    """S3's element order (with checksum elements) takes the one-pass path; any other order the block path."""
    from integrations.storage.s3_contents import parse_contents

    ordered = (
        "<Contents><Key>k%201</Key><LastModified>m1</LastModified><ETag>&quot;e1&quot;</ETag>"
        "<ChecksumAlgorithm>CRC32</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType><Size>5</Size>"
        "<StorageClass>STANDARD</StorageClass></Contents>"
        "<Contents><Key>k2</Key><LastModified>m2</LastModified><ETag>e&amp;2</ETag><Size>7</Size></Contents>"
    )
    k2 = "<Key>k2</Key><LastModified>m2</LastModified>"
    shuffled = ordered.replace(k2, "<LastModified>m2</LastModified><Key>k2</Key>")
    # not side by side: whatever sits between the elements must reach botocore
    between = "\n<CommonPrefixes><Prefix>p/</Prefix></CommonPrefixes>"
    apart = ordered.replace("</Contents><Contents>", f"</Contents>{between}<Contents>")
    for contents, left in ((ordered, ""), (shuffled, ""), (apart, between)):
        refs, rest = parse_contents(f"<ListBucketResult>{contents}<EncodingType>url</EncodingType></ListBucketResult>")
        seen = [(r.key, r.size, r.etag, r.last_modified) for r in refs]
        assert seen == [("k 1", 5, "e1", "m1"), ("k2", 7, "e&2", "m2")]
        assert rest == f"<ListBucketResult>{left}<EncodingType>url</EncodingType></ListBucketResult>"


def test_fingerprints_keep_their_text_whatever_is_cached() -> None:
    """Ledgers written by earlier versions stay valid: the hashed text is fixed, shared layers or not."""
    import hashlib

    from encord_ingest.models import Entry, ObjectRef
    from tasks.metadata import MetadataPlan

    plan = MetadataPlan.build([r"path:(?P<site>site\d+)/", "set:team=a", "sidecar"], url_base="s3://b/")
    entries = [
        Entry(ObjectRef("site1/x.jpg", 3, "e1", "", "m1"), ObjectRef("site1/x.jpg.metadata.json", 9, "e9", "", "m9")),
        Entry(ObjectRef("site1/y.jpg", 4, "e2", "", "m2")),
        Entry(ObjectRef("other/z.jpg", 5, "e3", "", "m3")),
    ]
    cheap = plan.cheap(entries, lambda key: key)
    texts: dict[tuple[int, ...], str] = {}
    cached = [plan.fingerprint(e, c, "salt", texts) for e, c in zip(entries, cheap, strict=True)]
    plain = [plan.fingerprint(e, c, "salt") for e, c in zip(entries, cheap, strict=True)]
    first = "\x1f".join(
        [
            "salt",
            "e1",
            "3",
            "m1",
            "[('site', 'site1')]",
            "[('team', 'a')]",
            "-",
            "site1/x.jpg.metadata.json",
            "e9",
            "9",
            "m9",
        ]
    )
    assert cached == plain
    assert cached[0] == hashlib.blake2b(first.encode(), digest_size=16).hexdigest()
    assert cheap[0].layers[0] is cheap[1].layers[0], "equal path groups share one layer"
    assert len(set(cached)) == 3 and len(texts) == 2


def test_content_changes_are_told_apart_from_metadata_edits_and_older_ledgers() -> None:
    """GCS generation / Azure Content-MD5 name the bytes where the store has them; rows written with
    plain ETags (earlier versions) are compared by ETag, as then; a name the store no longer gives
    (an Azure block upload sets no Content-MD5) means new bytes."""
    from tasks.batch import content_changed
    from tasks.metadata import MetadataPlan

    gcs = ObjectRef("a.jpg", 1, "etag-after-metadata-edit", "17", "t", content_id="gen:17")
    assert not content_changed("gen:17", gcs)
    assert content_changed("gen:16", gcs)
    assert content_changed("CKih16GjycICEAE=", gcs), "an ETag-only row: the ETag moved, as it did before"
    assert not content_changed("etag-after-metadata-edit", gcs)
    s3 = ObjectRef("a.jpg", 1, "9a0364b9e99bb480dd25e1f0284c8555")
    assert content_changed("0cc175b9c0f1b6a831c399e269772661", s3)
    assert not content_changed("9a0364b9e99bb480dd25e1f0284c8555", s3)
    assert content_changed("md5:kAFQmDzST7DWlj99KOF/cg==", s3), "Content-MD5 gone: rewritten by blocks"
    # listed index tags join the fingerprint; without tags the text is what it always was
    plan = MetadataPlan.build(["object"], url_base="s3://b/")
    plain, tagged, retagged = (
        Entry(ObjectRef("a.jpg", 1, "e", "", "m")),
        Entry(ObjectRef("a.jpg", 1, "e", "", "m", tags="tags:1")),
        Entry(ObjectRef("a.jpg", 1, "e", "", "m", tags="tags:2")),
    )
    prints = [plan.fingerprint(e, plan.cheap([e], str)[0], "salt") for e in (plain, tagged, retagged)]
    assert len(set(prints)) == 3
