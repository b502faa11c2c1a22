"""`python -m integrations.events http|sqs`: run the notification bridge to Prefect.

The shared secret comes from ENCORD_INGEST_RECEIVER_SECRET, `--secret-file` or a Prefect Secret
block (`--secret-block`); it is never taken on the command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from integrations.events.auth import Authenticator
from integrations.events.batcher import DEFAULT_MAX_BYTES, DEFAULT_MAX_KEYS, DEFAULT_WINDOW, Batcher
from integrations.events.emit import PrefectEmitter
from integrations.events.receiver import DEFAULT_MAX_BODY, Receiver
from integrations.events.sqs import SqsPoller

SECRET_ENV = "ENCORD_INGEST_RECEIVER_SECRET"


def _secrets(args: argparse.Namespace) -> list[str]:
    found = [os.environ.get(SECRET_ENV, "")]
    found += [Path(p).read_text().strip() for p in args.secret_file]
    if args.secret_block:
        from prefect.blocks.system import Secret

        found.append(str(Secret.load(args.secret_block).get()))
    return [s for s in found if s]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m integrations.events", description=__doc__)
    parser.add_argument("--window", type=float, default=DEFAULT_WINDOW, help="seconds to collect keys per bucket")
    parser.add_argument("--max-keys", type=int, default=DEFAULT_MAX_KEYS, help="keys per event at most")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="JSON bytes of keys per event")
    parser.add_argument("--prefect-api-url", default=None, help="default: PREFECT_API_URL")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="mode", required=True)
    http = sub.add_parser("http", help="receive pushes on POST /events")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, default=8787)
    http.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY)
    http.add_argument("--secret-file", action="append", default=[], help="file holding a shared secret")
    http.add_argument("--secret-block", default=None, help="Prefect Secret block holding the shared secret")
    http.add_argument("--allowed-origin", action="append", default=None, help="CloudEvents webhook origins")
    sqs = sub.add_parser("sqs", help="long-poll an SQS queue")
    sqs.add_argument("--queue-url", required=True)
    sqs.add_argument("--wait-seconds", type=int, default=20)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    emitter = PrefectEmitter(args.prefect_api_url)
    batcher = Batcher(emitter.emit, window=args.window, max_keys=args.max_keys, max_bytes=args.max_bytes)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.mode == "http":
        try:
            auth = Authenticator(_secrets(args))
        except ValueError as exc:
            print(f"error: {exc}: set {SECRET_ENV} or pass --secret-file/--secret-block", file=sys.stderr)
            return 2
        config: dict[str, Any] = {"max_body": args.max_body}
        if args.allowed_origin:
            config["allowed_origins"] = tuple(o.lower() for o in args.allowed_origin)
        receiver = Receiver(auth, batcher, args.host, args.port, **config).start()
        print(f"ready {receiver.url}", flush=True)
        stop.wait()
        receiver.stop()
        return 0
    import boto3

    poller = SqsPoller(boto3.client("sqs"), args.queue_url, batcher, wait_seconds=args.wait_seconds)
    thread = threading.Thread(target=poller.run, name="sqs-poller", daemon=True)
    thread.start()
    print(f"ready {args.queue_url}", flush=True)
    stop.wait()
    poller.stop()
    thread.join(timeout=args.wait_seconds + 5)
    batcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
