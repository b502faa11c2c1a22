"""Command line: ``python -m integrations.encord.emulator`` (also behind ``encord-ingest emulator``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .auth import public_key_hex
from .config import FAULT_KINDS, EmulatorConfig, FaultConfig


def _integration(value: str) -> tuple[str, str]:
    title, sep, provider = value.rpartition(":")
    if not sep or not title or not provider:
        raise argparse.ArgumentTypeError(f"expected TITLE:PROVIDER, got {value!r}")
    return title, provider


def _kinds(value: str) -> list[str]:
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = sorted(set(kinds) - FAULT_KINDS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {unknown}; known: {sorted(FAULT_KINDS)}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encord-emulator", description="HTTP emulator of the Encord API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (announced on the ready line)")
    parser.add_argument(
        "--authorized-key",
        action="append",
        default=[],
        metavar="FILE.pub",
        help="OpenSSH ssh-ed25519 public key file allowed to call the API (repeatable; none = any signer)",
    )
    parser.add_argument(
        "--integration",
        action="append",
        type=_integration,
        default=None,
        metavar="TITLE:PROVIDER",
        help="cloud integration (repeatable; default local-aws:aws, local-gcp:gcp, local-azure:azure)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-kinds", type=_kinds, default=[], help="comma list of " + ",".join(sorted(FAULT_KINDS)))
    parser.add_argument("--fault-timeout-seconds", type=float, default=30.0)
    parser.add_argument("--fault-seed", type=int, default=None)
    parser.add_argument("--fault-max", type=int, default=None, help="stop injecting after this many faults")
    parser.add_argument("--job-delay-seconds", type=float, default=0.0)
    parser.add_argument("--log-level", default="warning")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    keys = [public_key_hex(Path(path).read_text()) for path in args.authorized_key]
    config = EmulatorConfig(
        authorized_keys=keys,
        faults=FaultConfig(
            rate=args.fault_rate,
            kinds=args.fault_kinds,
            seed=args.fault_seed,
            timeout_seconds=args.fault_timeout_seconds,
            max_faults=args.fault_max,
        ),
        job_delay_seconds=args.job_delay_seconds,
    )
    if args.integration:
        config.integrations = list(args.integration)
    return config


def main(argv: list[str] | None = None) -> int:
    """Parse argv, serve until interrupted, return an exit code."""
    from .server import serve

    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"encord-emulator: {exc}", file=sys.stderr)
        return 2
    try:
        serve(config, args.host, args.port, log_level=args.log_level)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"encord-emulator: {exc}", file=sys.stderr)
        return 1
    return 0
