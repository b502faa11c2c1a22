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
from botocore.config import Config

from integrations import servers
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


@pytest.fixture
def aws_in_environ(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment points boto3 at moto (for stores opened in the test itself)."""
    for name, value in aws.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def s3(aws: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(max_pool_connections=32),
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
def emulator_session(
    aws: dict[str, str], gcp: dict[str, str], azure: dict[str, str], keys: KeyPair
) -> Iterator[Emulator]:
    """Started with every cloud's environment: it checks object existence through the same variables."""
    emulator = new_emulator({**aws, **gcp, **azure}, keys)
    try:
        yield emulator
    finally:
        emulator.proc.stop()


def new_emulator(env: dict[str, str], keys: KeyPair) -> Emulator:
    """An Encord emulator that accepts the session's key and gives up on injected hangs after 3 s."""
    return Emulator(start_emulator(env, "--authorized-key", str(keys.public), "--fault-timeout-seconds", "3"))


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


def cli_env(aws: dict[str, str], keys: KeyPair, domain: str, prefect_api: str, home: Path) -> dict[str, str]:
    """What a user exports: cloud credentials, the Encord key and domain, Prefect; short test timeouts."""
    return {
        **aws,
        "ENCORD_SSH_KEY_FILE": str(keys.private),
        "ENCORD_DOMAIN": domain,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "ENCORD_INGEST_RETRY_WAIT": "0.05",
        "ENCORD_INGEST_RETRY_MAX_WAIT": "1",
        "ENCORD_INGEST_RETRY_ATTEMPTS": "12",
        "ENCORD_INGEST_ITEM_RETRY_WAIT": "0.1",
        "ENCORD_INGEST_HTTP_TIMEOUT": "2",
        "ENCORD_INGEST_POLL_SECONDS": "2",
    }


@pytest.fixture
def cli(tmp_path: Path, aws: dict[str, str], emulator: Emulator, keys: KeyPair, prefect_api: str) -> Cli:
    return Cli(env=cli_env(aws, keys, emulator.url, prefect_api, tmp_path), cwd=tmp_path)


# -- GCS (fake-gcs-server) and Azure Blob (Azurite) ---------------------------------------------------


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[Proc]:
    proc = servers.start_fake_gcs()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def gcp(fake_gcs: Proc) -> dict[str, str]:
    """STORAGE_EMULATOR_HOST for subprocesses; the tests' own clients are built explicitly (see `gcs`)."""
    return servers.gcs_env(fake_gcs.url)


@pytest.fixture(scope="session")
def gcs(gcp: dict[str, str]) -> Any:
    """A google-cloud-storage client on fake-gcs-server, without touching os.environ."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test-project",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=gcp["STORAGE_EMULATOR_HOST"]),
    )


@pytest.fixture(scope="session")
def azurite() -> Iterator[Proc]:
    proc = servers.start_azurite()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def azure(azurite: Proc) -> dict[str, str]:
    """AZURE_STORAGE_CONNECTION_STRING for Azurite's well-known development account."""
    return servers.azure_env(azurite.url)


@pytest.fixture(scope="session")
def azblob(azure: dict[str, str]) -> Any:
    """A BlobServiceClient on Azurite."""
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(azure["AZURE_STORAGE_CONNECTION_STRING"])


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (127.0.0.1:5432, user postgres), dropped afterwards."""
    import uuid

    import psycopg

    name = f"encord_ingest_test_{uuid.uuid4().hex[:10]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Prefect deployments on a real server (test_dashboard, test_deployments) --------------------------

REPO = Path(__file__).resolve().parent.parent
STACK_SEED = {  # key -> body; sidecars are JSON beside their object
    "data/a.jpg": b"\xff\xd8a",
    "data/a.jpg.json": b'{"site": "north"}',
    "data/b.png": b"\x89PNGb",
    "data/c.jpg": b"\xff\xd8c",
}


@dataclass
class PrefectStack:
    """`prefect server` + process pool + deployments/prefect.yaml deployed + `prefect worker start`."""

    server: Proc
    worker: Proc
    env: dict[str, str]
    bucket: str
    folder: str
    emulator: Emulator  # its own: runs the stack starts late (cron, events) never land in another test's state

    @property
    def api(self) -> str:
        return f"{self.server.url}/api"

    def get(self, path: str) -> Any:
        res = requests.get(f"{self.api}{path}", timeout=30)
        res.raise_for_status()
        return res.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        res = requests.post(f"{self.api}{path}", json=body, timeout=30)
        res.raise_for_status()
        return res.json() if res.content else None

    def deployment(self, flow_name: str) -> dict[str, Any]:
        return self.get(f"/deployments/name/{flow_name}/{self.bucket}")

    def flow_runs(self, deployment_id: str) -> list[dict[str, Any]]:
        return self.post(
            "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "START_TIME_ASC"}
        )

    def wait_for_run(self, deployment_id: str, timeout: float, done: int = 1) -> list[dict[str, Any]]:
        """Until `done` runs of the deployment are final; fails early when one ends badly."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            runs = self.flow_runs(deployment_id)
            final = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
            bad = [r for r in final if r["state_type"] != "COMPLETED"]
            assert not bad, (
                f"{bad[0]['name']}: {bad[0]['state_type']} {bad[0]['state']['message']}\n{self.worker.tail()}"
            )
            if len(final) >= done:
                return final
            assert time.monotonic() < deadline, (
                f"no final run in {timeout}s: {[r['state_type'] for r in runs]}\n{self.worker.tail()}"
            )
            time.sleep(2)

    def artifacts(self, flow_run_id: str) -> list[dict[str, Any]]:
        return self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})

    def task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        return self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> None:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd[:4])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def deployment_env(
    aws: dict[str, str], server: Proc, home: Path, emulator_url: str, bucket: str, *, cron: str, query_seconds: int
) -> dict[str, str]:
    """What bootstrap, `prefect deploy` and the workers of a local deployment stack run with
    (deployments/prefect.yaml reads the ENCORD_INGEST_* variables); nothing from the shell's Prefect setup."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ENCORD_"))},
        **aws,
        "PWD": str(REPO),
        "PREFECT_API_URL": f"{server.url}/api",
        "PREFECT_HOME": str(home / "client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds),
        "PREFECT_LOGGING_LEVEL": "INFO",
        "ENCORD_DOMAIN": emulator_url,
        "ENCORD_INGEST_POLL_SECONDS": "2",
        "ENCORD_INGEST_RETRY_WAIT": "0.05",
        "ENCORD_INGEST_SCHEME": "s3",
        "ENCORD_INGEST_BUCKET": bucket,
        "ENCORD_INGEST_PREFIX": "data/",
        "ENCORD_INGEST_FOLDER": f"folder-{bucket}",
        "ENCORD_INGEST_INTEGRATION": "local-aws",
        "ENCORD_INGEST_CRON": cron,
        "ENCORD_INGEST_STATE_DIR": str(home / "state"),
        "ENCORD_INGEST_SCHEMA": str(home / "schema.yaml"),
    }


def deploy(env: dict[str, str], *bootstrap_args: str) -> None:
    """deployments/bootstrap.py (work pool, blocks, limits), then `prefect deploy --all` from prefect.yaml."""
    _run([sys.executable, "deployments/bootstrap.py", *bootstrap_args], env)
    prefect = str(Path(sys.executable).parent / "prefect")
    _run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)


@pytest.fixture(scope="session")
def prefect_stack(
    tmp_path_factory: pytest.TempPathFactory,
    aws: dict[str, str],
    gcp: dict[str, str],
    azure: dict[str, str],
    keys: KeyPair,
    s3: Any,
) -> Iterator[PrefectStack]:
    import uuid

    bucket = f"deployed-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for key, body in STACK_SEED.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    home = tmp_path_factory.mktemp("stack-prefect")
    schema = home / "schema.yaml"
    schema.write_text("keys:\n  site: {type: enum, values: [north, south]}\n")
    emulator = new_emulator({**aws, **gcp, **azure}, keys)
    server: Proc | None = None
    worker: Proc | None = None
    try:
        server = servers.start_prefect_server(home / "server")
        # the key comes from the Secret block, not the env
        env = deployment_env(aws, server, home, emulator.url, bucket, cron="* * * * *", query_seconds=3)
        deploy(env, "--encord-key-file", str(keys.private))
        worker = servers.start_prefect_worker(env, cwd=REPO, limit=2)
        yield PrefectStack(server, worker, env, bucket, env["ENCORD_INGEST_FOLDER"], emulator)
    finally:
        if worker is not None:
            servers.stop_prefect_worker(worker)
        if server is not None:
            server.stop()
        emulator.proc.stop()


@pytest.fixture(scope="session")
def scheduled_run(prefect_stack: PrefectStack) -> dict[str, Any]:
    """The first cron run, completed; the schedule is then paused so nothing else lists the bucket."""
    deployment = prefect_stack.deployment("encord-ingest")
    try:
        run = prefect_stack.wait_for_run(deployment["id"], timeout=200)[0]
    finally:
        requests.patch(f"{prefect_stack.api}/deployments/{deployment['id']}", json={"paused": True}, timeout=30)
    return run
