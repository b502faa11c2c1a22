"""Emulator configuration: one dataclass shared by the CLI, the app factory and tests."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_INTEGRATIONS: tuple[tuple[str, str], ...] = (
    ("local-aws", "aws"),
    ("local-gcp", "gcp"),
    ("local-azure", "azure"),
)
REQUEST_FAULT_KINDS = frozenset({"429", "500", "502", "503", "timeout", "slow"})
ITEM_FAULT_KIND = "item"
FAULT_KINDS = REQUEST_FAULT_KINDS | {ITEM_FAULT_KIND}


@dataclass
class FaultConfig:
    """Which faults to inject and how often; replaced wholesale via POST /_emulator/faults."""

    rate: float = 0.0
    kinds: list[str] = field(default_factory=list)
    seed: int | None = None
    timeout_seconds: float = 30.0
    max_faults: int | None = None  # stop injecting after this many faults (deterministic tests)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate}")
        unknown = sorted(set(self.kinds) - FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {sorted(FAULT_KINDS)}")
        if self.timeout_seconds < 0:
            raise ValueError("fault timeout_seconds must be >= 0")
        if self.max_faults is not None and self.max_faults < 0:
            raise ValueError("max_faults must be >= 0")

    def to_dict(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "kinds": list(self.kinds),
            "seed": self.seed,
            "timeout_seconds": self.timeout_seconds,
            "max_faults": self.max_faults,
        }


@dataclass
class EmulatorConfig:
    """Everything that shapes an emulator instance.

    authorized_keys holds OpenSSH public key lines (``ssh-ed25519 AAAA...``) or raw Ed25519 public keys
    in hex; empty means any correctly signed request is accepted.
    """

    authorized_keys: list[str] = field(default_factory=list)
    integrations: list[tuple[str, str]] = field(default_factory=lambda: list(DEFAULT_INTEGRATIONS))
    faults: FaultConfig = field(default_factory=FaultConfig)
    job_delay_seconds: float = 0.0
    long_poll_max_seconds: float = 2.0
    metadata_limit_bytes: int = 10_000_000
    head_threshold: int = 32  # per bucket: up to this many URLs are HEADed, more trigger one prefix listing
