"""Who may post notifications: a shared secret, or an HMAC-SHA256 signature of the body.

Each sender can carry a different proof, so several are accepted: `X-Ingest-Token: SECRET`
(a static delivery header, e.g. Event Grid), `Authorization: Bearer SECRET`,
`Authorization: Basic` with the secret as password (SNS: `https://ingest:SECRET@host/events`),
`?token=SECRET` (Pub/Sub push cannot set headers) or `X-Ingest-Signature: sha256=HEX` over
the raw body. Every comparison is constant-time; several secrets may be active (rotation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from enum import Enum

TOKEN_HEADER = "X-Ingest-Token"
SIGNATURE_HEADER = "X-Ingest-Signature"


class Verdict(Enum):
    OK = "ok"
    MISSING = "missing"  # 401: no credentials at all
    WRONG = "wrong"  # 403: credentials present, none valid


def sign(secret: str, body: bytes) -> str:
    """The signature header value a sender puts on `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _same(given: str, secrets: Sequence[str]) -> bool:
    """Constant-time against every secret (no early exit that would leak which one matched)."""
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(given.encode(), secret.encode())
    return ok


def _basic_password(value: str) -> str | None:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


class Authenticator:
    """Holds the secrets; never renders them (no repr, no logging)."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Sequence[str]) -> None:
        cleaned = [s for s in secrets if s]
        if not cleaned:
            raise ValueError("the receiver needs at least one non-empty shared secret")
        self._secrets = tuple(cleaned)

    def __repr__(self) -> str:
        return f"Authenticator({len(self._secrets)} secret(s))"

    def tokens(self, headers: Mapping[str, str], query_token: str | None) -> list[str]:
        """Every token-like credential the request carries (without the body)."""
        found: list[str] = []
        if headers.get(TOKEN_HEADER):
            found.append(headers[TOKEN_HEADER].strip())
        scheme, _, value = (headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and value:
            found.append(value.strip())
        elif scheme.lower() == "basic" and value:
            password = _basic_password(value.strip())
            if password is not None:
                found.append(password)
        if query_token:
            found.append(query_token)
        return found

    def has_credentials(self, headers: Mapping[str, str], query_token: str | None) -> bool:
        return bool(self.tokens(headers, query_token) or headers.get(SIGNATURE_HEADER))

    def check_tokens(self, headers: Mapping[str, str], query_token: str | None) -> Verdict:
        """Decide on tokens alone, before the body is read; MISSING means "look at the signature"."""
        tokens = self.tokens(headers, query_token)
        if not tokens:
            return Verdict.MISSING
        return Verdict.OK if any(_same(t, self._secrets) for t in tokens) else Verdict.WRONG

    def check_signature(self, headers: Mapping[str, str], body: bytes) -> Verdict:
        given = (headers.get(SIGNATURE_HEADER) or "").strip()
        if not given:
            return Verdict.MISSING
        if not given.startswith("sha256="):
            return Verdict.WRONG
        return Verdict.OK if _same(given.lower(), [sign(s, body) for s in self._secrets]) else Verdict.WRONG
