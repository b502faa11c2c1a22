"""The per-app bundle of collaborators that routes reach through ``request.app.state.emulator``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from fastapi import Request

from .auth import SignatureVerifier
from .config import EmulatorConfig
from .faults import FaultInjector
from .jobs import JobWorker
from .state import State

_INTEGRATION_NS = uuid.UUID("6f1c1a52-57c8-4f57-9d2e-6d1f6a0e2b11")


@dataclass(frozen=True)
class Integration:
    uuid: str
    title: str
    provider: str


def integration_uuid(title: str) -> str:
    """Deterministic, so manifests and configs can refer to the same id across restarts."""
    return str(uuid.uuid5(_INTEGRATION_NS, title))


@dataclass
class Emulator:
    config: EmulatorConfig
    state: State
    faults: FaultInjector
    worker: JobWorker
    verifier: SignatureVerifier
    integrations: list[Integration] = field(default_factory=list)

    @classmethod
    def build(cls, config: EmulatorConfig) -> Emulator:
        state = State()
        faults = FaultInjector(config.faults)
        return cls(
            config=config,
            state=state,
            faults=faults,
            worker=JobWorker(state, config, faults),
            verifier=SignatureVerifier(config.authorized_keys),
            integrations=[Integration(integration_uuid(t), t, p) for t, p in config.integrations],
        )


def emulator(request: Request) -> Emulator:
    emu: Emulator = request.app.state.emulator
    return emu
