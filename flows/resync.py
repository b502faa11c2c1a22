"""The Active re-sync on its own, as a flow for deployments: after a schema fix, without re-importing."""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow
from prefect.states import Failed

from encord_ingest.errors import IngestError
from flows.downstream import active_resync
from integrations.encord.active import project_hashes

log = logging.getLogger("encord_ingest.flow")


@flow(name="encord-active-resync", log_prints=True)
def resync(active_projects: list[str], timeout: float | None = None) -> Any:
    """Ask Encord to re-sync each Active project; succeeds when Encord accepted every request.

    Accepted is all the API can confirm: the sync itself runs in Encord, with no completion signal.
    """
    try:
        result = active_resync(project_hashes(active_projects), timeout)
    except IngestError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    if result["status"] != "accepted":
        bad = [p["project"] for p in result["projects"] if not p["accepted"]]
        return Failed(message=f"Active re-sync not accepted for {', '.join(bad)}", data=result)
    return result
