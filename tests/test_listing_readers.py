"""The lean listing readers on hand-made input: Azure List Blobs pages (what is read, what is left to
the SDK) and GCS listing timestamps, against what the SDKs themselves make of them."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import xml.etree.ElementTree as ET

import pytest

from integrations.storage.azure_pages import Unreadable, iso_time, parse_page
from integrations.storage.gcs import updated_iso
from integrations.storage.s3_contents import parse_contents
from integrations.storage.xml_text import xml_text

MD5 = base64.b64encode(hashlib.md5(b"x").digest()).decode()


def _blob(name: str = "a.jpg", *, props: str = "", extra: str = "", name_attrs: str = "") -> str:
    props = props or (
        "<Creation-Time>Mon, 02 Nov 2026 10:00:00 GMT</Creation-Time>"
        "<Last-Modified>Thu, 03 Dec 2026 16:29:14 GMT</Last-Modified><Etag>0x8DC1</Etag>"
        f"<Content-Length>7</Content-Length><Content-Type>image/jpeg</Content-Type><Content-MD5>{MD5}</Content-MD5>"
        "<BlobType>BlockBlob</BlobType>"
    )
    return f"<Blob><Name{name_attrs}>{name}</Name>{extra}<Properties>{props}</Properties></Blob>"


def _page(*blobs: str, marker: str = "<NextMarker/>") -> str:
    head = '<?xml version="1.0"?><EnumerationResults ContainerName="c"><Prefix/><MaxResults>5</MaxResults>'
    return f"{head}<Blobs>{''.join(blobs)}</Blobs>{marker}</EnumerationResults>"


def digest(tags: dict[str, str]) -> str:
    return "tags:" + ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def test_reads_the_fields_an_object_ref_needs() -> None:
    tags = (
        "<Tags><TagSet><Tag><Key>site</Key><Value>n&amp;s</Value></Tag><Tag><Key>z</Key><Value/></Tag></TagSet></Tags>"
    )
    body = _page(
        _blob("dir/a &amp; b &lt;c&gt;.jpg"),
        _blob(
            "v.jpg",
            extra="<VersionId>2026-12-03T16:29:14.1234567Z</VersionId><IsCurrentVersion>true</IsCurrentVersion>",
        ),
        _blob("t.jpg").replace("</Properties>", f"</Properties>{tags}"),
        marker="<NextMarker>2!96!MDAw&amp;</NextMarker>",
    )
    refs, marker, prefixes = parse_page(body, digest)
    assert prefixes == []
    assert marker == "2!96!MDAw&"
    assert [r.key for r in refs] == ["dir/a & b <c>.jpg", "v.jpg", "t.jpg"]
    first = refs[0]
    assert (first.size, first.etag, first.last_modified) == (7, "0x8DC1", "2026-12-03T16:29:14+00:00")
    assert first.content_id == f"md5:{MD5}" and first.version == "" and first.tags == ""
    assert refs[1].version == "2026-12-03T16:29:14.1234567Z"
    assert refs[2].tags == "tags:site=n&s,z="


def test_last_page_empty_page_and_blobs_without_md5() -> None:
    props = '<Last-Modified>Sun, 01 Feb 2026 00:00:09 GMT</Last-Modified><Etag>"0x1"</Etag>'
    props += "<Content-Length>0</Content-Length><Content-MD5 />"
    refs, marker, _ = parse_page(_page(_blob("e.bin", props=props)), digest)
    assert marker == "" and refs[0].content_id == "" and refs[0].etag == "0x1" and refs[0].size == 0
    assert parse_page(_page(marker="<NextMarker></NextMarker>"), digest) == ([], "", [])


def test_a_level_of_a_delimited_listing_has_prefixes_and_blobs() -> None:
    prefix = "<BlobPrefix><Name>{}</Name></BlobPrefix>"
    body = _page(prefix.format("a/"), _blob("b.jpg"), prefix.format("c &amp; d/"), marker="<NextMarker>m2</NextMarker>")
    refs, marker, prefixes = parse_page(body, digest, delimited=True)
    assert prefixes == ["a/", "c & d/"] and [r.key for r in refs] == ["b.jpg"] and marker == "m2"
    assert parse_page(_page(prefix.format("only/")), digest, delimited=True) == ([], "", ["only/"])
    with pytest.raises(Unreadable):  # a prefix name Azure had to encode: the SDK decodes it
        parse_page(_page('<BlobPrefix><Name Encoded="true">x%01/</Name></BlobPrefix>'), digest, delimited=True)


@pytest.mark.parametrize(
    "stamp", ["Thu, 03 Dec 2026 16:29:14 GMT", "Sun, 01 Feb 2026 00:00:09 GMT", "Wed, 29 Feb 2028 23:59:59 GMT"]
)
def test_times_read_as_the_sdk_s_datetimes_print(stamp: str) -> None:
    from azure.storage.blob._generated._utils.serialization import Deserializer  # the SDK's own reading

    assert iso_time(stamp) == Deserializer.deserialize_rfc(stamp).isoformat()
    assert iso_time(stamp) == email.utils.parsedate_to_datetime(stamp).isoformat()


@pytest.mark.parametrize(
    "body",
    [
        _page(_blob("ctl%01.jpg", name_attrs=' Encoded="true"')),  # a name XML cannot carry: the SDK decodes it
        _page(
            _blob(
                props="<Last-Modified>Thu, 03 Dec 2026 16:29:14 GMT</Last-Modified><Content-Length>1</Content-Length>"
            )
        ),
        _page(_blob(props="<Last-Modified>03/12/2026</Last-Modified><Etag>1</Etag><Content-Length>1</Content-Length>")),
        _page(_blob(), marker=""),  # no NextMarker at all
        _page(_blob()).replace("</Blobs>", "<BlobPrefix><Name>dir/</Name></BlobPrefix></Blobs>"),
        _page(_blob()).replace("</Blob>", "", 1),
        "<Error><Code>AuthenticationFailed</Code></Error>",
    ],
    ids=["encoded-name", "no-etag", "odd-date", "no-marker", "prefix", "unbalanced", "error-body"],
)
def test_pages_it_does_not_vouch_for_go_to_the_sdk(body: str) -> None:
    with pytest.raises(Unreadable):
        parse_page(body, digest)


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-12-03T16:29:14Z",
        "2026-12-03T16:29:14.000Z",
        "2026-12-03T16:29:14.5Z",
        "2026-12-03T16:29:14.123Z",
        "2026-12-03T16:29:14.123456Z",
        "2026-12-03T16:29:14.123456789Z",
        "2026-12-03T16:29:14.000000999Z",
        "2028-02-29T23:59:59.999999999Z",
    ],
)
def test_gcs_times_read_as_the_sdk_s_datetimes_print(stamp: str) -> None:
    from google.cloud._helpers import _rfc3339_nanos_to_datetime

    assert updated_iso(stamp) == _rfc3339_nanos_to_datetime(stamp).isoformat()


def test_gcs_times_the_sdk_refuses_are_refused() -> None:
    with pytest.raises(ValueError):
        updated_iso("03/12/2026 16:29")
    assert updated_iso(None) == ""


@pytest.mark.parametrize(
    "raw", ["plain", "a &amp; b &lt;c&gt; &quot;&apos;", "cr\rlf\r\nlf\n", "&#13;&#x0D;&#10;\r", "\u00fc&#252;&#xFC;"]
)
def test_xml_text_is_what_an_xml_parser_makes_of_the_same_characters(raw: str) -> None:
    """botocore and the Azure SDK read pages with ElementTree: raw line ends become \\n, `&#13;` stays."""
    assert xml_text(raw) == ET.fromstring(f"<v>{raw}</v>").text


def test_keys_with_raw_line_ends_read_as_an_xml_parser_reads_them() -> None:
    s3_page = "<ListBucketResult>{}<IsTruncated>false</IsTruncated></ListBucketResult>".format(
        "".join(
            f"<Contents><Key>{k}</Key><LastModified>2026-12-03T16:29:14.000Z</LastModified><ETag>&quot;e&quot;</ETag>"
            f"<Size>1</Size></Contents>"
            for k in ("a\rb.jpg", "c\r\nd.jpg", "e.jpg")
        )
    )
    assert [r.key for r in parse_contents(s3_page)[0]] == ["a\nb.jpg", "c\nd.jpg", "e.jpg"]
    refs = parse_page(_page(_blob("x\ry.jpg"), _blob("z.jpg")), digest).refs
    assert [r.key for r in refs] == ["x\ny.jpg", "z.jpg"]


def test_a_tag_in_an_unexpected_form_sends_the_page_to_the_sdk() -> None:
    tags = (
        "<Tags><TagSet><Tag><Key>k</Key><Value>v</Value></Tag><Tag><Key>j</Key> <Value>w</Value></Tag></TagSet></Tags>"
    )
    with pytest.raises(Unreadable):
        parse_page(_page(_blob().replace("</Properties>", f"</Properties>{tags}")), digest)
