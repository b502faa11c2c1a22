"""Credentials for deployed flow runs, from Prefect Secret blocks into the environment the SDKs read.

Flow parameters are visible in the UI and the API, so they only *name* blocks; the values are
read inside the run (each flow run of a worker or `serve` is its own process) and never logged.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping

from encord_ingest.errors import ConfigError

ENCORD_KEY_ENV = "ENCORD_SSH_KEY"
# Only credential variables: a block must not be able to set PATH, PYTHONPATH, LD_PRELOAD, ...
ALLOWED_ENV = frozenset(
    {
        ENCORD_KEY_ENV,
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
    }
)


def _secret_value(block: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(block, _sync=True).get()
    except ValueError:
        raise ConfigError(
            f"Prefect Secret block {block!r} not found: create it (UI > Blocks, or deployments/bootstrap.py)"
        ) from None
    return value if isinstance(value, str) else json.dumps(value)


def _service_account_file(content: str) -> str:
    """GOOGLE_APPLICATION_CREDENTIALS must be a path: write the key JSON to a private temp file."""
    fd, path = tempfile.mkstemp(prefix="gcp-credentials-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    os.chmod(path, 0o600)
    atexit.register(_remove, path)
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def load_secret_env(encord_key_block: str | None = None, secret_env: Mapping[str, str] | None = None) -> list[str]:
    """Set credential variables from Secret blocks; returns the variable names set (never values)."""
    wanted = dict(secret_env or {})
    if encord_key_block:
        wanted[ENCORD_KEY_ENV] = encord_key_block
    unknown = sorted(set(wanted) - ALLOWED_ENV)
    if unknown:
        raise ConfigError(f"secret_env may only set {', '.join(sorted(ALLOWED_ENV))}; not {', '.join(unknown)}")
    for name, block in wanted.items():
        value = _secret_value(block)
        if name == "GOOGLE_APPLICATION_CREDENTIALS" and value.lstrip().startswith("{"):
            value = _service_account_file(value)
        os.environ[name] = value  # ENCORD_SSH_KEY wins over an ENCORD_SSH_KEY_FILE in the worker's env
    return sorted(wanted)
