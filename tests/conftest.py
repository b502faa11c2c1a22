"""Fixtures: real moto, the real Encord emulator (as a process), a Prefect test server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from integrations.servers import KeyPair, Proc, aws_env, make_keypair, start_emulator, start_moto

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def moto() -> Iterator[Proc]:
    proc = start_moto()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def aws(moto: Proc) -> dict[str, str]:
    return aws_env(moto.url)


@pytest.fixture(scope="session")
def s3(aws: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass
class Emulator:
    proc: Proc

    @property
    def url(self) -> str:
        return self.proc.url

    def state(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_emulator/state", timeout=10).json()

    def reset(self) -> None:
        requests.post(f"{self.url}/_emulator/reset", timeout=10).raise_for_status()
        self.faults(0.0, [])

    def faults(self, rate: float, kinds: list[str]) -> None:
        requests.post(
            f"{self.url}/_emulator/faults", json={"rate": rate, "kinds": kinds}, timeout=10
        ).raise_for_status()


@pytest.fixture(scope="session")
def emulator_session(aws: dict[str, str], keys: KeyPair) -> Iterator[Emulator]:
    proc = start_emulator(aws, "--authorized-key", str(keys.public), "--fault-timeout-seconds", "3")
    try:
        yield Emulator(proc)
    finally:
        proc.stop()


@pytest.fixture
def emulator(emulator_session: Emulator) -> Emulator:
    emulator_session.reset()
    return emulator_session


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect API server for the session (the official test harness), heartbeats off."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield str(PREFECT_API_URL.value())


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


@dataclass
class Cli:
    """Runs `encord-ingest` as a user would: a separate process with only environment variables."""

    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
        done = subprocess.run(
            [sys.executable, "-m", "encord_ingest.cli", *args],
            cwd=self.cwd,
            env={**os.environ, **self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(tmp_path: Path, aws: dict[str, str], emulator: Emulator, keys: KeyPair, prefect_api: str) -> Cli:
    env = {
        **aws,
        "ENCORD_SSH_KEY_FILE": str(keys.private),
        "ENCORD_DOMAIN": emulator.url,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "ENCORD_INGEST_RETRY_WAIT": "0.05",
        "ENCORD_INGEST_RETRY_MAX_WAIT": "1",
        "ENCORD_INGEST_RETRY_ATTEMPTS": "12",
        "ENCORD_INGEST_HTTP_TIMEOUT": "2",
        "ENCORD_INGEST_POLL_SECONDS": "2",
    }
    return Cli(env=env, cwd=tmp_path)
