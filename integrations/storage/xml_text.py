"""XML character data as the lean listing readers (S3, Azure) take it out of a page with regexes."""

from __future__ import annotations

import re

_ENTITY = re.compile(r"&(#[xX][0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _entity(m: re.Match[str]) -> str:
    ref = m.group(1)
    if ref[0] != "#":
        return _NAMED[ref]
    return chr(int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:]))


def is_plain(text: str) -> bool:
    """True when `xml_text` gives `text` back unchanged: no entity, no raw line end."""
    return "&" not in text and "\r" not in text


def xml_text(value: str) -> str:
    """XML character data as an XML parser (botocore's, the Azure SDK's) gives it: raw line ends
    normalised to \\n (XML 1.0, 2.11), then the five entities and numeric references expanded
    (HTML's rules differ; a `&#13;` stays a carriage return)."""
    if is_plain(value):
        return value
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    return _ENTITY.sub(_entity, value) if "&" in value else value
