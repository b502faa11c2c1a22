"""The `encord-ingest` command line. Errors become one line on stderr and an exit code:
0 all registered or unchanged, 1 some dead-lettered, 2 usage/configuration, 3 aborted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from encord_ingest.errors import IngestError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
schema_app = typer.Typer(no_args_is_help=True, help="Check, verify or apply a metadata schema file.")
app.add_typer(schema_app, name="schema")

err = Console(stderr=True)
out = Console()

Include = Annotated[list[str], typer.Option("--include", help="glob on the key relative to the prefix (repeatable)")]
Exclude = Annotated[list[str], typer.Option("--exclude", help="glob to leave out (repeatable)")]
MetadataOpt = Annotated[
    list[str], typer.Option("--metadata", help="sidecar | object | path:REGEX | table:URL | set:NAME=VALUE")
]
SchemaOpt = Annotated[str | None, typer.Option("--schema", help="metadata schema YAML")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the run summary as one JSON object on stdout")]
GroupByOpt = Annotated[
    str, typer.Option(help="regex with a named group; images with the same value become one image group")
]
GroupAsOpt = Annotated[str, typer.Option("--as", help="image-group or image-sequence (for --group-by)")]
ProbeOpt = Annotated[
    bool, typer.Option(help="read video (MP4/MOV) and audio (WAV) headers into the manifest's media metadata")
]
Dicom3dOpt = Annotated[
    str, typer.Option(help="spatial DICOM tags required: auto (multi-slice series), require, ignore")
]


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("encord_ingest").setLevel(logging.DEBUG if verbose else logging.INFO)


def _params(**kwargs: Any) -> Any:
    from tasks.run import IngestParams

    try:
        return IngestParams(**{k: v for k, v in kwargs.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"--{where.replace('_', '-')}: {first['msg']}") from None


def _precheck(params: Any) -> None:
    """Everything checkable offline, before Prefect or any network is touched."""
    from integrations.storage import parse_source
    from tasks.filters import KeyFilter
    from tasks.metadata import parse_spec
    from tasks.run import compile_group_regex
    from tasks.schema import load_schema

    parse_source(params.source, account=params.account)
    KeyFilter.build(params.include, params.exclude)
    for i, spec in enumerate(params.metadata):
        parse_spec(spec, i)
    compile_group_regex(params.group_by)
    if params.active_projects:
        from integrations.encord.active import project_hashes

        project_hashes(params.active_projects)  # a typo fails now, not after the import
    if params.schema_file:
        load_schema(params.schema_file)


def _print_summary(summary: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
        return
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix, gs://..., az://..., file:///path or a path")],
    folder: Annotated[str, typer.Option(help="Encord storage folder (created when missing)")],
    integration: Annotated[str, typer.Option(help="title of the Encord cloud integration for the bucket")],
    include: Include = [],  # noqa: B006 - typer reads defaults
    exclude: Exclude = [],  # noqa: B006
    metadata: MetadataOpt = [],  # noqa: B006
    schema: SchemaOpt = None,
    batch_size: Annotated[int, typer.Option(help="objects per batch task")] = 1000,
    batch_bytes: Annotated[int, typer.Option(help="max manifest bytes per upload job")] = 4 * 1024 * 1024,
    max_in_flight: Annotated[int, typer.Option(help="batches processed at once")] = 4,
    fanout: Annotated[int, typer.Option(help="parallel listers over top-level prefixes")] = 4,
    ledger: Annotated[str | None, typer.Option(help="SQLite path or postgresql:// URL")] = None,
    account: Annotated[str, typer.Option(help="Azure storage account (az:// sources)")] = "",
    sidecar_suffix: Annotated[str, typer.Option(help="suffix of sidecar files")] = ".metadata.json",
    item_retries: Annotated[int, typer.Option(help="re-submissions of an item that failed transiently")] = 3,
    active_project: Annotated[list[str], typer.Option("--active-project", help="Active project to re-sync")] = [],  # noqa: B006
    on_content_change: Annotated[
        str, typer.Option(help="object content changed: 'skip' keeps the Encord item, 'reimport' adds a new one")
    ] = "skip",
    flag_deleted: Annotated[
        str, typer.Option(help="set this clientMetadata key to true on items whose object left the source")
    ] = "",
    report_deleted: Annotated[bool, typer.Option(help="report objects gone from the source since the last run")] = True,
    group_by: GroupByOpt = "",
    group_as: GroupAsOpt = "image-group",
    dicom_3d: Dicom3dOpt = "auto",
    probe_media: ProbeOpt = False,
    retry_dead_letters: Annotated[
        bool, typer.Option(help="no listing: re-drive the objects the ledger holds as dead-lettered")
    ] = False,
    inventory: Annotated[
        str, typer.Option(help="S3 Inventory manifest.json (s3://.../manifest.json): its rows replace the listing")
    ] = "",
    as_json: JsonOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """List SOURCE, attach clientMetadata, and register every object in an Encord folder."""
    _setup_logging(verbose)
    params = _params(
        source=source,
        folder=folder,
        integration=integration,
        include=include,
        exclude=exclude,
        metadata=metadata,
        schema_file=schema,
        batch_size=batch_size,
        batch_bytes=batch_bytes,
        max_in_flight=max_in_flight,
        fanout=fanout,
        ledger=ledger,
        account=account,
        sidecar_suffix=sidecar_suffix,
        item_retries=item_retries,
        active_projects=active_project,
        on_content_change=on_content_change,
        flag_deleted=flag_deleted,
        report_deleted=report_deleted,
        group_by=group_by,
        group_as=group_as,
        dicom_3d=dicom_3d,
        probe_media=probe_media,
        retry_dead_letters=retry_dead_letters,
        inventory=inventory,
    )
    _precheck(params)
    from flows.ingest import run_ingest_flow

    state = run_ingest_flow(params)
    summary = state.result(raise_on_failure=True)
    if not isinstance(summary, dict):
        raise IngestError(f"the flow ended in state {state.type.value}: {state.message}")
    _print_summary(summary, as_json, "encord-ingest run")
    raise typer.Exit(1 if summary.get("failed") else 0)


@app.command()
def manifest(
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix, file:///path or a local path")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for manifest-NNNNN.json files")],
    include: Include = [],  # noqa: B006
    exclude: Exclude = [],  # noqa: B006
    metadata: MetadataOpt = [],  # noqa: B006
    schema: SchemaOpt = None,
    batch_size: Annotated[int, typer.Option(help="objects per manifest")] = 1000,
    batch_bytes: Annotated[int, typer.Option(help="max bytes per manifest")] = 4 * 1024 * 1024,
    account: Annotated[str, typer.Option(help="Azure storage account (az:// sources)")] = "",
    sidecar_suffix: Annotated[str, typer.Option(help="suffix of sidecar files")] = ".metadata.json",
    group_by: GroupByOpt = "",
    group_as: GroupAsOpt = "image-group",
    dicom_3d: Dicom3dOpt = "auto",
    probe_media: ProbeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List + metadata + validation, writing Encord JSON manifests; contacts no Encord."""
    _setup_logging()
    from tasks.manifest_only import write_manifests

    params = _params(
        source=source,
        include=include,
        exclude=exclude,
        metadata=metadata,
        schema_file=schema,
        batch_size=batch_size,
        batch_bytes=batch_bytes,
        account=account,
        sidecar_suffix=sidecar_suffix,
        group_by=group_by,
        group_as=group_as,
        dicom_3d=dicom_3d,
        probe_media=probe_media,
    )
    _precheck(params)
    summary = write_manifests(params, out_dir)
    _print_summary(summary, as_json, f"manifests in {out_dir}")
    raise typer.Exit(1 if summary.get("failed") else 0)


@schema_app.command("check")
def schema_check(file: Annotated[Path, typer.Argument(help="schema YAML")]) -> None:
    """Validate a schema file locally against Encord's rules."""
    from tasks.schema import load_schema

    parsed = load_schema(file)
    table = Table(title=f"{file}: {len(parsed.keys)} keys, valid")
    table.add_column("key")
    table.add_column("type")
    for key, spec in parsed.keys.items():
        table.add_row(key, spec.describe())
    out.print(table)


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@schema_app.command("verify")
def schema_verify(
    file: Annotated[Path, typer.Argument(help="schema YAML")],
    run: Annotated[
        str | None, typer.Option("--run", help="also check what an ingest run sent: its run id, or 'latest'")
    ] = None,
    observed: Annotated[
        Path | None, typer.Option("--observed", help="observed-keys file of a run (<state-dir>/runs/ID.observed.json)")
    ] = None,
    state_dir: Annotated[str, typer.Option(help="state directory of the ingest runs")] = ".encord-ingest",
    as_json: Annotated[bool, typer.Option("--json", help="print the diff as one JSON object")] = False,
) -> None:
    """Compare the workspace's metadata schema with FILE (and a run's data). Exit 0 consistent, 1 not."""
    _setup_logging()
    from integrations.encord.schema_api import gateway_from_env, verify_schema
    from tasks.schema import load_schema
    from tasks.schema_sync import find_observed, read_observed, render_diff

    if run is not None and observed is not None:
        raise UsageError("give --run or --observed, not both")
    parsed = load_schema(file)
    data, label = None, "the run"
    if run is not None or observed is not None:
        path = observed if observed is not None else find_observed(state_dir, run or "latest")
        data, run_id = read_observed(path)
        label = f"run {run_id}" if run_id else str(path)
    diff = verify_schema(gateway_from_env(), file=parsed, observed=data, file_label=str(file), data_label=label)
    _write(json.dumps(diff.as_dict()) if as_json else render_diff(diff))
    raise typer.Exit(0 if diff.consistent else 1)


@schema_app.command("apply")
def schema_apply(
    file: Annotated[Path, typer.Argument(help="schema YAML")],
    force: Annotated[
        bool, typer.Option("--force", help="also make the changes Encord allows but that re-type keys")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan, write nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as one JSON object")] = False,
) -> None:
    """Write FILE to the workspace's metadata schema: only what differs, never deleting a key."""
    _setup_logging()
    from integrations.encord.schema_api import apply_schema, gateway_from_env
    from tasks.schema import load_schema
    from tasks.schema_sync import render_plan

    plan = apply_schema(gateway_from_env(), load_schema(file), force=force, dry_run=dry_run)
    written = bool(plan.changes) and not plan.conflicts and not dry_run
    _write(json.dumps({"written": written, **plan.as_dict()}) if as_json else render_plan(plan, written=written))
    plan.raise_for_conflicts()


@app.command()
def resync(
    active_project: Annotated[
        list[str], typer.Option("--active-project", help="Active project hash (repeatable)")
    ] = [],  # noqa: B006 - typer reads defaults
    timeout: Annotated[
        float | None, typer.Option(help="seconds, for all projects together, to keep retrying until Encord accepts")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the outcome as one JSON object")] = False,
) -> None:
    """Re-sync Active project(s) now. Waits only until Encord accepts: the API reports no completion."""
    _setup_logging()
    from integrations.encord.active import resync as resync_projects

    if not active_project:
        raise UsageError("give the project(s) to re-sync: --active-project PROJECT_HASH (repeatable)")
    if timeout is not None and timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    report = resync_projects(active_project, timeout=timeout)
    if as_json:
        _write(json.dumps(report.as_dict()))
    else:
        for o in report.outcomes:
            _write(f"{o.project}: {'accepted' if o.accepted else 'NOT accepted: ' + o.error}")
    report.raise_for_failures()


@app.command()
def status(
    ledger: Annotated[str | None, typer.Option(help="SQLite path or postgresql:// URL")] = None,
    as_json: JsonOpt = False,
) -> None:
    """What the ledger knows: objects by state, recent runs, dead letters."""
    from integrations.ledger import DEFAULT_LEDGER, Ledger

    location = ledger or DEFAULT_LEDGER
    if "://" not in location and not Path(location).exists():
        raise UsageError(f"no ledger at {location}: run `encord-ingest ingest` first or pass --ledger")
    book = Ledger(location)
    try:
        data = {"counts": book.counts_by_state(), "runs": book.recent_runs(10), "dead_letters": book.dead_letters(20)}
    finally:
        book.close()
    if as_json:
        sys.stdout.write(json.dumps(data, default=str) + "\n")
        return
    counts = Table(title="objects by state")
    counts.add_column("state")
    counts.add_column("objects", justify="right")
    for state, n in sorted(data["counts"].items()):
        counts.add_row(state, f"{n:,}")
    out.print(counts)
    runs = Table(title="recent runs")
    for col in ("started", "status", "source", "folder", "registered", "failed"):
        runs.add_column(col)
    for r in data["runs"]:
        s = r.get("summary") or {}
        runs.add_row(
            r["started_at"],
            r["status"],
            r["source"],
            r["folder"],
            str(s.get("registered", "")),
            str(s.get("failed", "")),
        )
    out.print(runs)
    if data["dead_letters"]:
        dead = Table(title="dead letters (latest 20)")
        dead.add_column("url")
        dead.add_column("error")
        for d in data["dead_letters"]:
            dead.add_row(d["url"], d["last_error"])
        out.print(dead)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def emulator(ctx: typer.Context) -> None:
    """Run the Encord API emulator (see --help of the emulator itself: `emulator -- --help`)."""
    from integrations.encord.emulator import main as emulator_main

    raise typer.Exit(emulator_main(list(ctx.args)))


@app.command()
def demo(
    objects: Annotated[int, typer.Option(help="sample objects to generate")] = 300,
    keep_running: Annotated[bool, typer.Option(help="leave the dashboard up until Ctrl-C")] = False,
) -> None:
    """The whole pipeline on local emulators with generated sample data."""
    _setup_logging()
    from encord_ingest.demo import run_demo

    raise typer.Exit(run_demo(objects=objects, keep_running=keep_running))


def _is_click_error(exc: Exception) -> bool:
    """Usage errors from click, or from the copy of click that newer typer releases vendor."""
    import click

    kinds: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        kinds.append(VendoredClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(kinds))


INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def _say_interrupted() -> None:
    err.print("encord-ingest: interrupted; the ledger keeps what finished, re-run to continue", markup=False)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: maps our errors to exit codes with a one-line reason."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        rc = int(app(args=argv, standalone_mode=False) or 0)
        if rc == INTERRUPTED:  # typer turns Ctrl-C into Exit(130), returned here; no command exits 130
            _say_interrupted()
        return rc
    except typer.Exit as exc:
        return int(exc.exit_code)
    except IngestError as exc:
        err.print(f"encord-ingest: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        _say_interrupted()
        return INTERRUPTED
    except Exception as exc:  # click usage errors and anything unexpected: one line, no traceback
        if _is_click_error(exc):
            err.print(f"encord-ingest: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
            return 2
        if os.environ.get("ENCORD_INGEST_DEBUG"):
            raise
        err.print(
            f"encord-ingest: internal error {exc.__class__.__name__}: {str(exc)[:300]} "
            "(set ENCORD_INGEST_DEBUG=1 for the traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
