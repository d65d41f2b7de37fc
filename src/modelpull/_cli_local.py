"""The CLI's commands for models already on this machine: list, show, verify, rm, prune.

    modelpull list [--json]                               every model, totals per source, free disk
    modelpull show <ref> [--json]                         files, digests, GGUF / safetensors summary
    modelpull verify [<ref>...|--all] [--repair] [--json] re-hash; exit 1 if a file is bad
    modelpull rm <ref>... [-y]                            asks first; refused while in use
    modelpull prune [--older-than DAYS] [--dry-run]       unfinished partials, detached revisions

A face over modelpull._inventory: it parses, asks, and prints; the inventory does the work.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from ._errors import ModelPullError
from ._units import format_bytes

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_commands(commands: Any) -> None:
    """The local-model subcommands, on the CLI's subparsers."""
    listing = commands.add_parser("list", aliases=["ls"], help="list the models on this machine",
                                  description="Every model on this machine: Hugging Face cache revisions, Ollama "
                                  "models, URL downloads and unfinished downloads, with sizes and free disk.")
    listing.add_argument("--json", action="store_true", help="print one JSON object (as GET /local-models)")

    show = commands.add_parser("show", help="files, digests and format details of a local model",
                               description="Files, sizes, digests and locations of a local model; GGUF metadata "
                               "and safetensors header summaries.")
    show.add_argument("ref", help="a local model id from 'modelpull list' (or an alias: hf:org/name, llama3.2:1b, "
                                  "a file name, a URL)")
    show.add_argument("--json", action="store_true", help="print JSON")

    verify = commands.add_parser("verify", help="re-hash local models against their digests",
                                 description="Re-hash every file against its known digest (Hub: sha256 or git "
                                 "blob sha1; Ollama: sha256; URL: the recorded sha256). Exit status 1 if a file "
                                 "is corrupt or missing.")
    verify.add_argument("refs", nargs="*", metavar="ref", help="local models to verify")
    verify.add_argument("--all", action="store_true", help="every model on this machine")
    verify.add_argument("--repair", action="store_true", help="fetch the corrupt or missing files again (only those)")
    verify.add_argument("--token", metavar="TOKEN", help="access token for a repair (default: HF_TOKEN, saved login)")
    verify.add_argument("--registry", metavar="URL", help="Ollama registry for a repair (default: the model's host)")
    verify.add_argument("--insecure", action="store_true", help="allow a plain-http Ollama registry for a repair")
    verify.add_argument("--json", action="store_true", help="print one JSON object per file")

    remove = commands.add_parser("rm", aliases=["remove"], help="delete a local model",
                                 description="Delete a model and the files no other model uses. Hub: the revision's "
                                 "snapshot and its unshared blobs; Ollama: the manifest and its unshared blobs; "
                                 "URL: the file and its record.")
    remove.add_argument("refs", nargs="+", metavar="ref", help="local models (ids from 'modelpull list')")
    remove.add_argument("-y", "--yes", action="store_true", help="do not ask")

    prune = commands.add_parser("prune", help="delete unfinished downloads and detached revisions",
                                description="Delete unfinished partials and Hub revisions no branch or tag names.")
    prune.add_argument("--older-than", metavar="DAYS", type=_days, help="only what was last written DAYS ago or more")
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of days") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more days")
    return value


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO, stdin: TextIO | None = None) -> int:
    """Run one local-model command; the exit status."""
    from ._inventory import Inventory

    inventory = Inventory(uses=_server_uses)
    command = {"ls": "list", "remove": "rm"}.get(args.command, args.command)
    try:
        return _COMMANDS[command](inventory, args, stdout, stderr, stdin or sys.stdin)
    except ModelPullError as exc:
        print(f"error: {exc}", file=stderr, flush=True)
        return EXIT_FAILED


def _server_uses() -> list:
    """Engines and running downloads of the modelpull servers using this MODELPULL_HOME: its
    SQLite store, or the replicas' PostgreSQL one (MODELPULL_DATABASE)."""
    from ._inventory import uses_from_records
    from ._settings import Settings

    settings = Settings.from_env()
    if settings.shared_database:
        from .server.store import StoreError
        from .server.store_postgres import read_records as read_shared_records

        try:
            jobs, engines = read_shared_records(settings.database_url)
        except StoreError as exc:
            raise ModelPullError(f"cannot tell whether a server uses it: {exc}", code="store_unavailable") from None
        return uses_from_records(jobs, engines)
    path = Path(settings.database_url)
    if not path.is_file():
        return []
    from .server.store import read_records

    jobs, engines = read_records(path)
    return uses_from_records(jobs, engines)


# ---------------------------------------------------------------------------------- list


def _list(inventory: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO, stdin: TextIO) -> int:
    summary = inventory.summary()
    if args.json:
        stdout.write(json.dumps(summary, indent=1) + "\n")
        return EXIT_OK
    models = summary["models"]
    if not models:
        where = ", ".join(s["path"] for s in summary["stores"]) or "no model folder exists yet"
        print(f"No models on this machine ({where}).", file=stdout)
    rows = [("ID", "SIZE", "STATUS", "MODIFIED")]
    for model in models:
        status = model["status"]
        if model["refs"]:
            status += f" ({', '.join(model['refs'])})"
        elif model["provider"] == "huggingface" and status == "complete":
            status += " (detached)"
        rows.append((model["id"], format_bytes(model["size_on_disk"]), status, _when(model["modified"])))
    if models:
        _table(rows, stdout)
        print(file=stdout)
    for provider, total in sorted(summary["totals"].items()):
        partial = f", {total['partial']} unfinished" if total["partial"] else ""
        print(f"{_SOURCE_NAMES.get(provider, provider)}: {total['models']} model(s){partial}, "
              f"{format_bytes(total['size_on_disk'])}", file=stdout)
    for disk in summary["disks"]:
        print(f"free disk: {format_bytes(disk['free'])} of {format_bytes(disk['total'])} ({disk['path']})",
              file=stdout)
    return EXIT_OK


_SOURCE_NAMES = {"huggingface": "Hugging Face cache", "ollama": "Ollama", "url": "URL downloads"}


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


# ---------------------------------------------------------------------------------- show


def _show(inventory: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO, stdin: TextIO) -> int:
    models = inventory.find(args.ref)
    shown = [inventory.show(model) for model in models]
    if args.json:
        stdout.write(json.dumps(shown if len(shown) > 1 else shown[0], indent=1) + "\n")
        return EXIT_OK
    for data in shown:
        print(data["id"], file=stdout)
        for label, key in (("status", "status"), ("location", "location"), ("source", "source"),
                           ("digest", "digest"), ("revision", "revision")):
            if data.get(key):
                print(f"  {label}: {data[key]}", file=stdout)
        if data.get("refs"):
            print(f"  refs: {', '.join(data['refs'])}", file=stdout)
        print(f"  size on disk: {format_bytes(data['size_on_disk'])} in {data['file_count']} file(s)", file=stdout)
        for info in data["formats"]:
            print(f"  {info['file']}: {_format_summary(info)}", file=stdout)
        print("  files:", file=stdout)
        for file in data["files"]:
            print(f"    {file['name']}  {format_bytes(file['size'])}  {file['digest'] or '(no digest)'}", file=stdout)
            print(f"      {file['path']}", file=stdout)
    return EXIT_OK


def _format_summary(info: dict[str, Any]) -> str:
    parts = [info["format"].upper()]
    if info.get("architecture"):
        parts.append(f"architecture {info['architecture']}")
    if info.get("parameter_count"):
        parts.append(f"{_count(info['parameter_count'])} parameters")
    if info.get("quantization"):
        parts.append(f"quantisation {info['quantization']}")
    if info.get("dtypes"):
        parts.append("dtypes " + ", ".join(sorted(info["dtypes"])))
    if info.get("context_length"):
        parts.append(f"context {info['context_length']}")
    parts.append(f"{info['tensor_count']} tensors")
    return ", ".join(parts)


def _count(value: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(value)


# ---------------------------------------------------------------------------------- verify


def _verify(inventory: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO, stdin: TextIO) -> int:
    from ._inventory import OK, UNCHECKED

    if args.all == bool(args.refs):
        print("error: name the models to verify, or pass --all", file=stderr)
        return EXIT_USAGE
    everything = inventory.models()
    if args.all:
        models = [m for m in everything if m.status == "complete"]
    else:
        models = _unique([m for ref in args.refs for m in inventory.find(ref, everything)])
    checks = _hash_with_progress(inventory, models, stderr, quiet=args.json)
    bad = [c for c in checks if c.status not in (OK, UNCHECKED)]
    for check in checks:
        if args.json:
            stdout.write(json.dumps(check.to_json()) + "\n")
        else:
            detail = f" ({check.detail})" if check.detail else ""
            print(f"{check.status:9} {check.model_id}  {check.file.name}{detail}", file=stdout)
    if bad and args.repair:
        return _repair(inventory, models, bad, args, stdout, stderr)
    if not args.json:
        print(f"{len(checks) - len(bad)} ok, {len(bad)} bad" + (": run again with --repair to fetch the bad "
                                                                 "files again" if bad else ""), file=stderr)
    return EXIT_FAILED if bad else EXIT_OK


def _unique(models: list) -> list:
    seen: dict[str, Any] = {}
    for model in models:
        seen.setdefault(model.id, model)
    return list(seen.values())


def _hash_with_progress(inventory: Any, models: list, stderr: TextIO, *, quiet: bool) -> list:
    total = inventory.bytes_to_verify(models)
    if quiet or not stderr.isatty():
        return inventory.verify(models)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from ._bars import console

    with Progress(TextColumn("verifying"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console(stderr), transient=True) as progress:
        task = progress.add_task("verify", total=total)
        return inventory.verify(models, on_bytes=lambda n: progress.advance(task, n))


def _repair(inventory: Any, models: list, bad: list, args: argparse.Namespace, stdout: TextIO,
            stderr: TextIO) -> int:
    from ._inventory import OK, UNCHECKED

    by_model: dict[str, list] = {}
    for check in bad:
        by_model.setdefault(check.model_id, []).append(check.file)
    failed = False
    for model in models:
        files = by_model.get(model.id)
        if not files:
            continue
        print(f"repairing {model.id}: fetching {len(files)} file(s) again", file=stderr, flush=True)
        options: dict[str, Any] = {}
        if args.token:
            options["token"] = args.token
        if model.provider == "ollama" and args.registry:
            options["registry"] = args.registry
        if model.provider == "ollama" and args.insecure:
            options["insecure"] = True
        try:
            final = asyncio.run(_last_item(inventory.repair(model, files, **options)))
        except ModelPullError as exc:
            print(f"error: {cli_words(str(exc))}", file=stderr)
            failed = True
            continue
        if final is None or final.status.value != "complete":
            print(f"error: repair of {model.id} failed: {cli_words(final.message if final else 'no result')}",
                  file=stderr)
            failed = True
            continue
        again = inventory.find(model.id)
        rechecked = [c for c in inventory.verify(again) if c.file.name in {f.name for f in files}]
        for check in rechecked:
            print(f"{'repaired' if check.status == OK else check.status:9} {check.model_id}  {check.file.name}",
                  file=stdout)
        failed = failed or any(c.status not in (OK, UNCHECKED) for c in rechecked)
    return EXIT_FAILED if failed else EXIT_OK


async def _last_item(stream: Any) -> Any:
    last = None
    async with contextlib.aclosing(stream) as items:
        async for item in items:
            last = item
    return last


def cli_words(message: str) -> str:
    """A library message in the CLI's words: the flag where the library names an argument."""
    for argument, flag in (("token=", "--token"), ("insecure=True", "--insecure"), ("registry=", "--registry"),
                           ("base_url=", "--base-url"), ("revision=", "--revision"), ("repo_type=", "--repo-type")):
        message = message.replace(argument, flag)
    return message


# ---------------------------------------------------------------------------------- rm, prune


def _rm(inventory: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO, stdin: TextIO) -> int:
    everything = inventory.models()
    models = _unique([m for ref in args.refs for m in inventory.find(ref, everything)])
    for model in models:
        reason = inventory.in_use(model)
        if reason:
            print(f"error: cannot remove {model.id}: {reason}; stop it first", file=stderr)
            return EXIT_FAILED
    if not args.yes:
        listing = "\n".join(f"  {m.id}  {format_bytes(m.size_on_disk)}  {m.location}" for m in models)
        if not stdin.isatty():
            print(f"would remove:\n{listing}\nerror: not asking on a non-interactive input: pass -y to remove",
                  file=stderr)
            return EXIT_USAGE
        print(f"This removes:\n{listing}", file=stderr)
        print("Remove? [y/N] ", end="", file=stderr, flush=True)
        if stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing removed", file=stderr)
            return EXIT_FAILED
    freed = 0
    for model in models:
        freed += inventory.remove(model)
        print(f"removed {model.id}", file=stdout)
    print(f"freed {format_bytes(freed)}", file=stderr)
    return EXIT_OK


def _prune(inventory: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO, stdin: TextIO) -> int:
    leftovers = inventory.prunable(args.older_than)
    if not leftovers:
        print("nothing to prune", file=stderr)
        return EXIT_OK
    total = sum(left.size for left in leftovers)
    for left in leftovers:
        print(f"{'would delete' if args.dry_run else 'deleting'}: {left.description}  {format_bytes(left.size)}",
              file=stdout)
    if args.dry_run:
        print(f"would free {format_bytes(total)}", file=stderr)
        return EXIT_OK
    freed = inventory.prune(leftovers)
    print(f"freed {format_bytes(freed)}", file=stderr)
    return EXIT_OK


_COMMANDS = {"list": _list, "show": _show, "verify": _verify, "rm": _rm, "prune": _prune}
