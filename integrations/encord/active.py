"""The Active re-sync step: the one SDK call Encord offers for it, behind one function."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from encord.exceptions import AuthorisationError, EncordException, ResourceNotFoundError

from encord_ingest.errors import ConfigError, EncordUnavailableError, UsageError
from integrations.encord.gateway import EncordGateway, EncordSettings, _short

log = logging.getLogger("encord_ingest.active")


@dataclass(slots=True, frozen=True)
class ResyncOutcome:
    project: str
    accepted: bool
    error: str = ""
    not_found: bool = False
    seconds: float = 0.0


@dataclass(slots=True)
class ResyncReport:
    outcomes: list[ResyncOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[ResyncOutcome]:
        return [o for o in self.outcomes if not o.accepted]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "accepted" if not self.failed else "failed",
            "projects": [asdict(o) for o in self.outcomes],
        }

    def raise_for_failures(self) -> None:
        """Unknown projects are a configuration error (exit 2); anything else means Encord did not accept (3)."""
        bad = self.failed
        if not bad:
            return
        listed = "; ".join(f"{o.project}: {o.error}" for o in bad)
        message = f"Active re-sync not accepted for {len(bad)} of {len(self.outcomes)} project(s): {listed}"
        if all(o.not_found for o in bad):
            raise ConfigError(message)
        raise EncordUnavailableError(message)


class _Refused(Exception):
    """The project is unknown or not ours: not worth a retry."""


class _OutOfTime(Exception):
    pass


def project_hashes(values: Sequence[str]) -> list[str]:
    """Encord project hashes are UUIDs; checked before any call, duplicates dropped (order kept)."""
    out: list[str] = []
    for raw in values:
        text = raw.strip()
        try:
            uuid.UUID(text)
        except ValueError:
            raise UsageError(f"--active-project {raw!r} is not an Encord project hash (a UUID)") from None
        if text not in out:
            out.append(text)
    return out


def resync(
    hashes: Sequence[str], *, settings: EncordSettings | None = None, timeout: float | None = None
) -> ResyncReport:
    """Ask Encord to re-sync each Active project, and report, per project, whether Encord accepted.

    Exactly what happens, per project: `uc.get_project(h)` (GET v2/public/projects/{h}, then GET its
    ontology) and `project.active_sync()` (POST v2/public/active/{h}/sync, no body), all inside
    `EncordGateway.call`, so throttling, 5xx and transport errors are retried with backoff.

    What "wait" can mean: the API is fire-and-forget. `active_sync()` returns nothing, no job id and
    no status call exist, and the sync itself runs on Encord's side, visible only in the app. So this
    function waits only until Encord has *accepted* the request (HTTP 2xx); `accepted=True` does not
    mean the sync finished. `timeout` (seconds, for all projects together) bounds that wait: no new
    attempt starts after it, a backoff sleep never runs past it, and each request's read timeout is
    capped to it. None uses the gateway's retry policy as it is. Unknown projects fail fast;
    rejected credentials raise.
    """
    wanted = project_hashes(hashes)
    settings = settings or EncordSettings.from_env()
    deadline = None if timeout is None else time.monotonic() + timeout
    if timeout is not None:
        settings = replace(settings, read_timeout=max(1.0, min(settings.read_timeout, timeout)))

    def sleep(seconds: float) -> None:
        left = seconds if deadline is None else min(seconds, deadline - time.monotonic())
        if left > 0:
            time.sleep(left)

    gateway = EncordGateway(settings, sleep=sleep)
    report = ResyncReport()
    for project in wanted:

        def attempt(project: str = project) -> None:
            if deadline is not None and time.monotonic() >= deadline:
                raise _OutOfTime
            try:
                gateway.client.get_project(project).active_sync()
            except (ResourceNotFoundError, AuthorisationError) as exc:
                raise _Refused(_short(exc)) from None

        started = time.monotonic()
        try:
            gateway.call(f"re-sync Active project {project}", attempt)
            outcome = ResyncOutcome(project, True)
        except _Refused as exc:
            outcome = ResyncOutcome(project, False, f"no such project, or no access to it ({exc})", not_found=True)
        except _OutOfTime:
            outcome = ResyncOutcome(project, False, f"not accepted within the {timeout:g}s timeout")
        except EncordUnavailableError as exc:
            outcome = ResyncOutcome(project, False, str(exc))
        except EncordException as exc:
            outcome = ResyncOutcome(project, False, _short(exc))
        outcome = replace(outcome, seconds=round(time.monotonic() - started, 3))
        log.info("Active re-sync of %s: %s", project, "accepted" if outcome.accepted else outcome.error)
        report.outcomes.append(outcome)
    return report
