"""Verification of the SDK's Ed25519 RFC-9421-style request signatures (encord/http/v2/request_signer.py).

The key id in Signature-Input is the raw Ed25519 public key in hex, so authorisation is an allow-list of keys.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_LABEL = "encord-sig"
_KEYID_RE = re.compile(r';keyid="([0-9a-fA-F]+)"')
_COVERED = '("@method" "@request-target" "content-digest")'


class AuthError(Exception):
    """Raised when a request is unsigned, badly signed or signed by a key that is not allowed."""


def public_key_hex(key_text: str) -> str:
    """Normalise an OpenSSH ``ssh-ed25519 AAAA...`` line or a raw hex key to lowercase hex."""
    text = key_text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return text.lower()
    key = serialization.load_ssh_public_key(text.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("only ssh-ed25519 public keys are supported")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


class SignatureVerifier:
    """Checks content digest and signature of a request; an empty allow-list accepts any valid signer."""

    def __init__(self, authorized_keys: Iterable[str]) -> None:
        self._allowed = frozenset(public_key_hex(k) for k in authorized_keys)

    def verify(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> str:
        """Return the signer's key hex or raise AuthError. ``target`` is the raw path plus query."""
        sig_input = headers.get("signature-input")
        signature = headers.get("signature")
        digest = headers.get("content-digest")
        if not sig_input or not signature or not digest:
            raise AuthError("Missing request signature (Signature, Signature-Input, Content-Digest).")
        if digest != content_digest(body):
            raise AuthError("Content-Digest does not match the request body.")
        prefix = _LABEL + "="
        if not sig_input.startswith(prefix) or not signature.startswith(prefix + ":") or not signature.endswith(":"):
            raise AuthError("Malformed signature headers.")
        params = sig_input[len(prefix) :]
        if not params.startswith(_COVERED):
            raise AuthError("Signature does not cover @method, @request-target and content-digest.")
        match = _KEYID_RE.search(params)
        if match is None:
            raise AuthError("Signature-Input has no keyid.")
        keyid = match.group(1).lower()
        try:
            raw_sig = base64.b64decode(signature[len(prefix) + 1 : -1], validate=True)
            public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(keyid))
        except ValueError as exc:
            raise AuthError(f"Malformed signature or key id: {exc}") from exc
        base = "\n".join(
            [
                f'"@method": {method.upper()}',
                f'"@request-target": {target}',
                f'"content-digest": {digest}',
                f'"@signature-params": {params}',
            ]
        )
        try:
            public_key.verify(raw_sig, base.encode())
        except InvalidSignature as exc:
            raise AuthError("Invalid request signature.") from exc
        if self._allowed and keyid not in self._allowed:
            raise AuthError("The public key used to sign this request is not authorised.")
        return keyid
