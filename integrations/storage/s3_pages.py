"""ListObjectsV2 continuation pages without botocore's per-call machinery.

A botocore call costs about 1.5 ms of CPU beyond reading the page (serializer, endpoint rules,
a few dozen event hooks, response parsing): at 1,000 keys a page that is as much as all the
pipeline's own work per key. So botocore makes the first page of every listing as usual
(endpoint, region, credentials, retries, errors), the request it was about to sign is
remembered, and each next page is that request again with the new continuation token, signed
by the same botocore request signer and sent over the client's own HTTP session (its proxies,
TLS settings and connection pool). Anything but a plain 200 page - an error status, a redirect,
a transport fault, a body without the expected elements - makes the caller go on through
botocore from that token, so retries and error messages stay botocore's.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from botocore.awsrequest import AWSRequest
from botocore.utils import percent_encode_sequence

from integrations.storage import s3_contents
from integrations.storage.xml_text import xml_text

OPERATION = "ListObjectsV2"
_TRUNCATED = re.compile(r"<IsTruncated>\s*(true|false)\s*</IsTruncated>")
_TOKEN = re.compile(r"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_COMMON_PREFIX = re.compile(r"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>\s*</CommonPrefixes>")
_SIGNED_HEADERS = ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token")


class Template:
    """The first page's request as botocore built it, before signing."""

    def __init__(self, request: AWSRequest, signer: Any) -> None:
        self.url = request.url
        self.headers = {k: v for k, v in request.headers.items() if k not in _SIGNED_HEADERS}
        self.context = dict(request.context)
        self.signer = signer

    def for_token(self, token: str) -> AWSRequest:
        scheme, netloc, path, query, fragment = urlsplit(self.url)
        params = dict(parse_qsl(query, keep_blank_values=True))
        params["continuation-token"] = token
        url = urlunsplit((scheme, netloc, path, percent_encode_sequence(params), fragment))
        request = AWSRequest(method="GET", url=url, headers=dict(self.headers))
        request.context = dict(self.context)
        return request


class RawPages:
    """Installed on a listing client: remembers first-page requests, fetches the pages after them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._local = threading.local()
        self.session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        self.lean = 0  # pages fetched here
        self.declined = 0  # pages handed back to botocore
        client.meta.events.register(f"before-sign.s3.{OPERATION}", self._remember)

    def _remember(self, request: AWSRequest, request_signer: Any, signature_version: Any = None, **_: Any) -> None:
        if getattr(self._local, "armed", False) and isinstance(signature_version, str) and "v4" in signature_version:
            self._local.template = Template(request, request_signer)
            self._local.armed = False

    def first_page(self, **kwargs: Any) -> tuple[dict[str, Any], Template | None]:
        """A ListObjectsV2 call through botocore, and the template of its request (None if unsigned, ...)."""
        self._local.armed, self._local.template = self.session is not None, None
        try:
            page = self.client.list_objects_v2(**kwargs)
        finally:
            self._local.armed = False
        template, self._local.template = self._local.template, None
        return page, template

    def next_page(self, template: Template, token: str) -> dict[str, Any] | None:
        """The page after `token` as the lean reader parses it, or None: go on through botocore."""
        request = template.for_token(token)
        try:
            template.signer.sign(OPERATION, request)
            response = self.session.send(request.prepare())  # type: ignore[union-attr]
        except Exception:  # a transport fault, expired credentials, ...: botocore's retries decide
            return self._decline()
        if response.status_code != 200:
            return self._decline()
        refs, rest = s3_contents.parse_contents(response.content.decode("utf-8"))
        truncated = _TRUNCATED.search(rest)
        if truncated is None:
            return self._decline()
        page: dict[str, Any] = {s3_contents.RESULT_KEY: refs, "IsTruncated": truncated.group(1) == "true"}
        if "<CommonPrefixes>" in rest:  # a level of a delimited listing
            prefixes = _common_prefixes(rest)
            if prefixes is None:
                return self._decline()
            page["CommonPrefixes"] = [{"Prefix": prefix} for prefix in prefixes]
        token_match = _TOKEN.search(rest)
        if token_match is not None:
            page["NextContinuationToken"] = xml_text(token_match.group(1))
        self.lean += 1
        return page

    def _decline(self) -> None:
        self.declined += 1
        return None


def _common_prefixes(rest: str) -> list[str] | None:
    """`<CommonPrefixes>` as botocore decodes them (entities, then URL-decoding when the page says
    `EncodingType=url`), or None when one is not in the plain form."""
    found = _COMMON_PREFIX.findall(rest)
    if len(found) != rest.count("<CommonPrefixes>"):
        return None
    url_encoded = s3_contents.is_url_encoded(rest)
    return [s3_contents.name_text(raw, url_encoded) for raw in found]
