"""Grouped items: DICOM series (by SeriesInstanceUID) and image groups/sequences (`--group-by`).

Members of a group can sit in many listing pages and batches, so batches only *stage* them in
the ledger (one row each: group, order, metadata or the problem found). After the listing, each
group is read back in order, checked as a whole and registered as one item. Nothing holds more
than one group in memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from encord_ingest.models import Entry, Item, ItemKind, ObjectRef, Rejection
from integrations.ledger import State
from tasks.batch import BatchReport, RunContext, metadata_hash
from tasks.upload import upload_with_retries

SPATIAL_HINT = "needed to render the series in 3D"


@dataclass(slots=True)
class Group:
    key: str
    kind: ItemKind
    members: list[dict[str, Any]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.members)


def iter_group_batches(ctx: RunContext, batch_size: int, *, whole: bool = False) -> Iterator[list[Group]]:
    """Staged groups, a batch at a time (a batch holds whole groups, about `batch_size` files).

    `whole` for runs that saw only some files (explicit keys): groups then include the members
    earlier runs staged, and only this run's members are counted in its report.
    """
    staging = ctx.staging
    if staging is None:
        return
    batch: list[Group] = []
    files = 0
    for key, kind, members in staging.staged_groups(ctx.run_id, whole=whole):
        batch.append(Group(key, ItemKind(kind), members))
        files += len(members)
        if files >= batch_size:
            yield batch
            batch, files = [], 0
    if batch:
        yield batch


def _problems(group: Group, dicom_3d: str) -> list[str]:
    out = [f"{m['key']}: {m['problem']}" for m in group.members if m["problem"]]
    if group.kind == ItemKind.DICOM_SERIES and dicom_3d != "ignore":
        needs_3d = dicom_3d == "require" or (dicom_3d == "auto" and group.size > 1)
        if needs_3d:
            for m in group.members:
                missing = json.loads(m["metadata"]).get("__missing_spatial__", [])
                if missing:
                    out.append(f"{m['key']}: missing {', '.join(missing)} ({SPATIAL_HINT})")
    return out


def _item(ctx: RunContext, group: Group) -> Item:
    first = group.members[0]
    metadata = {k: v for k, v in json.loads(first["metadata"]).items() if not k.startswith("__")}
    store = ctx.source.store
    entries = [Entry(ObjectRef(m["key"], m["size"], m["etag"])) for m in group.members]
    urls = [m["url"] for m in group.members]
    title = group.key if group.kind != ItemKind.DICOM_SERIES else f"series {group.key}"
    item = Item(group.kind, first["key"], store.url_for(first["key"]), title, entries, urls, metadata)
    item.metadata_hash = metadata_hash(metadata)
    return item


class _GroupBatch:
    def __init__(self, ctx: RunContext, number: int, groups: Sequence[Group]) -> None:
        self.ctx = ctx
        self.groups = groups
        self.report = BatchReport(number=number, listed=sum(self._ours(g) for g in groups))
        self.rows: list[dict[str, Any]] = []
        self.rejections: list[Rejection] = []

    def _ours(self, group: Group) -> int:
        """Members this run listed: the only ones its report counts (others come from earlier runs)."""
        return sum(1 for m in group.members if m["run_id"] == self.ctx.run_id)

    def _rows(self, group: Group, state: str, **extra: Any) -> list[dict[str, Any]]:
        return [
            {
                "url": m["url"],
                "source": self.ctx.source.id,
                "key": m["key"],
                "etag": m["etag"],
                "size": m["size"],
                "fingerprint": m["fingerprint"],
                "state": state,
                "run_id": self.ctx.run_id,
                "kind": group.kind.value,
                "group_key": group.key,
                "data_hash": m["data_hash"],
                **extra,
            }
            for m in group.members
        ]

    def _fail(self, group: Group, rule: str, reason: str, *, transient: bool = False, attempts: int = 1) -> None:
        self.report.failed += self._ours(group)
        for m in group.members:
            if m["run_id"] != self.ctx.run_id:
                continue
            self.rejections.append(Rejection(m["url"], m["key"], "group", rule, reason, transient, attempts))
        self.rows += self._rows(group, State.FAILED, last_error=f"{rule}: {reason}", transient=transient)

    def run(self) -> BatchReport:
        started = time.monotonic()
        todo: dict[str, tuple[Group, Item]] = {}
        for group in self.groups:
            hashes = {m["data_hash"] for m in group.members}
            if all(m["status"] == "unchanged" for m in group.members) and len(hashes) == 1 and "" not in hashes:
                self.report.skipped += self._ours(group)
                self.report.skip_reasons["unchanged since the last run"] = self.report.skip_reasons.get(
                    "unchanged since the last run", 0
                ) + self._ours(group)
                continue
            problems = _problems(group, self.ctx.options.dicom_3d)
            if problems:
                what = "DICOM series" if group.kind == ItemKind.DICOM_SERIES else "group"
                shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
                self._fail(group, f"{group.kind.value}.invalid", f"{what} {group.key}: {shown}")
                continue
            item = _item(self.ctx, group)
            todo[item.url] = (group, item)
            self.report.observed.observe(item.client_metadata)
        if self.ctx.uploader is None:
            from tasks.manifest import render_manifest, split_by_limits

            items = [item for _, item in todo.values()]
            for chunk in split_by_limits(items, max_items=len(items) or 1, max_bytes=self.ctx.options.batch_bytes):
                self.report.manifests.append(render_manifest(chunk))
        else:
            self._submit(todo)
        self.ctx.dead_letters.write(self.rejections)
        if self.ctx.ledger is not None and self.ctx.uploader is not None:
            self.ctx.ledger.record(self.rows, run_id=self.ctx.run_id)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _submit(self, todo: dict[str, tuple[Group, Item]]) -> None:
        self.report.submitted += sum(self._ours(g) for g, _ in todo.values())

        def pending_rows(item: Item, attempts: int) -> list[dict[str, Any]]:
            group, _ = todo[item.url]
            return self._rows(group, State.PENDING, attempts=attempts, metadata_hash=item.metadata_hash)

        def count_job() -> None:
            self.report.jobs += 1

        def changed(item: Item) -> bool:  # a registered group whose files changed becomes a new item
            group, _ = todo[item.url]
            return any(m["data_hash"] for m in group.members)

        outcomes = upload_with_retries(
            self.ctx,
            [item for _, item in todo.values()],
            pending_rows=pending_rows,
            reimport=changed,
            label=f"group batch {self.report.number}",
            on_job=count_job,
        )
        for out in outcomes:
            group, item = todo[out.item.url]
            if out.uuid is not None:
                self.report.registered += self._ours(group)
                if self.ctx.staging is not None:
                    self.ctx.staging.set_staged_hash([m["url"] for m in group.members], out.uuid)
                self.rows += self._rows(
                    group, State.REGISTERED, data_hash=out.uuid, attempts=out.attempts, job_id=out.job_id,
                    metadata_hash=item.metadata_hash,
                )  # fmt: skip
            else:
                self._fail(group, "encord.item_error", out.error, transient=out.transient, attempts=out.attempts)


def process_group_batch(ctx: RunContext, number: int, groups: Sequence[Group]) -> BatchReport:
    return _GroupBatch(ctx, number, groups).run()
