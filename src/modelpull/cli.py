"""The command line: `modelpull pull <ref>` and `modelpull serve`.

    modelpull pull <ref> [flags]
        parse the reference (modelpull._refs)  ->  download_model(...)  ->  one of three views:
            rich bars on a terminal, plain log lines otherwise, JSON lines with --json
        exit 0 (the local path is the last line of stdout), 1 on a failed download,
        2 on bad usage, 130 on Ctrl-C (partial data kept: the same command resumes).
    modelpull serve [args]
        hands its arguments to modelpull.server.cli:serve_main, imported only when asked for.

The CLI is a face: it knows progress items and nothing about how bytes move.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TextIO

from . import __version__
from ._api import data_location, download_model
from ._cli_local import cli_words
from ._errors import ModelPullError
from ._progress import DownloadProgress, DownloadStatus
from ._refs import Reference, parse_reference
from ._units import format_bytes, format_seconds

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_MAX_CONNECTIONS = 64
_HUB_PROVIDERS = ("huggingface", "mlx")

_PULL_EXAMPLES = """\
references:
  https://host/path/model.gguf             a file over http(s)   (also url:https://...)
  hf:org/name[@revision][:path-or-glob]    a Hugging Face repo, one file, or files matching a glob
  mlx:name | mlx:org/name[@revision]       an MLX model (a bare name means mlx-community/<name>)
  ollama:name[:tag]                        an Ollama model (also ollama:host/namespace/name:tag)

examples:
  modelpull pull https://example.com/models/tinyllama.Q4_K_M.gguf
  modelpull pull https://example.com/model.gguf --to ~/models --sha256 <64 hex digits>
  modelpull pull hf:Qwen/Qwen2.5-0.5B-Instruct
  modelpull pull hf:Qwen/Qwen2.5-0.5B-Instruct@main --connections 16
  modelpull pull hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf
  modelpull pull 'hf:org/name:*.safetensors'          (quote globs from the shell)
  modelpull pull mlx:Llama-3.2-1B-Instruct-4bit
  modelpull pull ollama:llama3.2:1b --direct
  modelpull pull --json https://example.com/model.gguf | jq -r '.percent // empty'

Tokens: --token, or HF_TOKEN for Hugging Face. Ctrl-C keeps the partial data;
run the same command again to resume. Settings: MODELPULL_HOME (default ./models),
MODELPULL_CONNECTIONS, MODELPULL_STALL_TIMEOUT, MODELPULL_MAX_RETRIES, ...
"""


# ---------------------------------------------------------------------------------------
# Arguments


class UsageError(Exception):
    """A flag or reference the CLI refuses before anything starts (exit 2)."""


def _connections(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if not 1 <= value <= _MAX_CONNECTIONS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {_MAX_CONNECTIONS}, got {value}")
    return value


def _sha256(text: str) -> str:
    digest = text.strip()
    if digest.lower().startswith("sha256:"):
        digest = digest[len("sha256:"):]
    if not _SHA256.fullmatch(digest):
        raise argparse.ArgumentTypeError("expected 64 hexadecimal digits (a sha256 digest)")
    return digest.lower()


def _rate(text: str) -> int:
    """'500K' -> 512000 bytes/s (K, M, G are 1024-based, as curl's --limit-rate)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?)[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not a rate: use bytes per second, e.g. 500K, 20M, 1G")
    value = float(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " ")
    if value < 1024:
        raise argparse.ArgumentTypeError(f"'{text}' is below 1K (1024 bytes per second)")
    return int(value)


def _base_url(text: str) -> str:
    if not text.lower().startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"'{text}' is not an http(s) URL")
    return text.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpull",
        description="Get ML models onto this machine: resumable, multi-connection, verified "
        "downloads from Hugging Face, MLX, Ollama and plain URLs.",
        epilog="Run 'modelpull pull --help' for references and examples.",
    )
    parser.add_argument("--version", action="version", version=f"modelpull {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command")

    pull = commands.add_parser(
        "pull",
        help="download a model",
        description="Download a model by reference and print its local path.",
        epilog=_PULL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pull.add_argument("refs", nargs="+", metavar="ref",
                      help="what to download: an http(s) URL, hf:..., mlx:... or ollama:... (several: fetched "
                           "at once, one bar each)")
    pull.add_argument("--to", metavar="DIR", type=Path,
                      help="where files go: for URLs this folder (default: $MODELPULL_HOME or ./models); "
                           "for hf:/mlx: plain files here instead of the Hugging Face cache; for ollama: "
                           "(--direct) this Ollama store instead of $OLLAMA_MODELS")
    pull.add_argument("--sha256", metavar="HEX", type=_sha256,
                      help="expected sha256 of the file; a mismatch deletes it and fails")
    pull.add_argument("--connections", metavar="N", type=_connections,
                      help="connections per large file (default: 16)")
    pull.add_argument("-o", "--output", metavar="FILE", type=Path,
                      help="save the one file to FILE (a URL, or hf:org/name:path for one file of a repo)")
    pull.add_argument("--token", metavar="TOKEN",
                      help="access token for the source (default: HF_TOKEN, then the saved `hf auth login`)")
    pull.add_argument("--base-url", metavar="URL", type=_base_url,
                      help="the source's endpoint (Hugging Face mirror, Ollama server)")
    pull.add_argument("--revision", metavar="REV",
                      help="branch, tag or commit (hf: and mlx: references; same as @REV)")
    pull.add_argument("--include", metavar="GLOB", action="append",
                      help="hf:/mlx: only files matching GLOB (repeatable)")
    pull.add_argument("--exclude", metavar="GLOB", action="append",
                      help="hf:/mlx: skip files matching GLOB (repeatable)")
    pull.add_argument("--repo-type", choices=("model", "dataset"),
                      help="hf: the kind of repo (default: model)")
    pull.add_argument("--direct", action="store_true",
                      help="ollama: fetch from the registry into Ollama's store without a running Ollama")
    pull.add_argument("--registry", metavar="URL",
                      help="ollama: the registry to fetch from (implies --direct; default: https://<host of the name>)")
    pull.add_argument("--insecure", action="store_true",
                      help="ollama: allow a plain-http registry (as `ollama pull --insecure`)")
    pull.add_argument("--limit-rate", metavar="RATE", type=_rate,
                      help="cap the whole call's download speed, in bytes/s with K, M or G (1024-based): 500K, 20M")
    pull.add_argument("--dry-run", action="store_true",
                      help="print the plan (files, sizes, what is already here, disk needed) and download nothing")
    output = pull.add_mutually_exclusive_group()
    output.add_argument("-q", "--quiet", action="store_true",
                        help="print only the local path (or one error line)")
    output.add_argument("--json", action="store_true",
                        help="print one JSON progress object per line on stdout, nothing else")

    from . import _cli_local

    _cli_local.add_commands(commands)
    commands.add_parser("serve", help="run the download server (modelpull serve --help)", add_help=False)
    return parser


def download_arguments(args: argparse.Namespace, text: str | None = None) -> tuple[Reference, dict[str, Any]]:
    """The reference and the keyword arguments for download_model(); UsageError if inconsistent."""
    try:
        ref = parse_reference(text if text is not None else args.refs[0])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = dict(ref.options)
    hub = ref.provider in _HUB_PROVIDERS
    if args.revision is not None:
        if not hub:
            raise UsageError("--revision applies to hf: and mlx: references only")
        if not args.revision.strip():
            raise UsageError("--revision needs a branch, tag or commit")
        if options.get("revision") not in (None, args.revision):
            raise UsageError(
                f"two revisions given: @{options['revision']} in the reference and --revision {args.revision}"
            )
        options["revision"] = args.revision
    for flag, value in (("--include", args.include), ("--exclude", args.exclude), ("--repo-type", args.repo_type)):
        if value and not hub:
            raise UsageError(f"{flag} applies to hf: and mlx: references only")
    if args.include:
        if "filename" in options:
            raise UsageError("--include selects files of a whole repo: drop the file path from the reference")
        options["allow_patterns"] = [*options.get("allow_patterns", []), *args.include]
    if args.exclude:
        options["ignore_patterns"] = list(args.exclude)
    if args.repo_type:
        options["repo_type"] = args.repo_type
    if args.direct or args.registry:
        if ref.provider != "ollama":
            raise UsageError(f"{'--direct' if args.direct else '--registry'} applies to ollama: references only")
        if args.base_url is not None:
            raise UsageError("--base-url names an Ollama server, which --direct does not use: drop one of them "
                             "(the registry is --registry)")
        options["direct"] = True
    if args.registry:
        options["registry"] = args.registry.rstrip("/")
    if args.insecure:
        if ref.provider != "ollama":
            raise UsageError("--insecure applies to ollama: references only")
        options["insecure"] = True
    if args.base_url is not None and ref.provider == "url":
        raise UsageError("--base-url does not apply to a URL reference; the URL is the source")
    if args.to is not None:
        if hub:
            # A folder named by hand means "the files here", not a Hub cache inside it.
            options["local_dir"] = args.to.expanduser()
        elif ref.provider == "ollama":
            options["models_path"] = args.to.expanduser()
        else:
            options["models_dir"] = args.to.expanduser()
    if args.output is not None:
        if len(args.refs) > 1:
            raise UsageError("-o/--output names one file: give one reference")
        if ref.provider == "url":
            if args.to is not None:
                raise UsageError("-o/--output already says where the file goes: drop --to")
            output = args.output.expanduser()
            options["dest"], options["filename"] = str(output.parent), output.name
        elif not (hub and options.get("filename")):
            raise UsageError("-o/--output names one file: use it with a URL or hf:org/name:path/to/file; "
                             "for a whole repo use --to DIR")
    if args.sha256 is not None:
        options["sha256"] = args.sha256
    if args.connections is not None:
        options["connections"] = args.connections
    return ref, options


# ---------------------------------------------------------------------------------------
# Views: what the user sees while the stream runs


class View:
    """Receives every progress item; `finish()` once the stream is over (or interrupted)."""

    def show(self, item: DownloadProgress) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self) -> None:
        pass


class QuietView(View):
    def show(self, item: DownloadProgress) -> None:
        pass


class JsonView(View):
    """One `DownloadProgress.to_dict()` per line, flushed, for scripts (with "ref" when several)."""

    def __init__(self, out: TextIO, ref: str | None = None) -> None:
        self._out = out
        self._ref = ref

    def show(self, item: DownloadProgress) -> None:
        data = item.to_dict() if self._ref is None else {"ref": self._ref, **item.to_dict()}
        self._out.write(json.dumps(data, separators=(",", ":")) + "\n")
        self._out.flush()


def plain_log(stream: TextIO) -> bool:
    """True for a pipe or a file that nothing (rich's FORCE_COLOR, TTY_COMPATIBLE) asks to treat as
    a terminal: plain log lines, decided without importing rich (a twentieth of a second)."""
    if "FORCE_COLOR" in os.environ or "TTY_COMPATIBLE" in os.environ:
        return False  # rich decides
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return True


def terminal_console(stream: TextIO) -> Console | None:
    """A rich Console on `stream` when it is a terminal (rich decides where FORCE_COLOR or
    TTY_COMPATIBLE ask it to), for bars; None for plain log lines, without importing rich."""
    if plain_log(stream):
        return None
    from ._bars import console  # rich costs a twentieth of a second to import

    errors = console(stream)
    return errors if errors.is_terminal else None


class LogView(View):
    """Plain lines for a log file or a pipe: every new message, and a heartbeat while downloading."""

    HEARTBEAT = 10.0  # seconds between progress lines when nothing else changes
    MIN_GAP = 1.0  # seconds between lines for changing download messages

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic, prefix: str = "") -> None:
        self._out = out
        self._clock = clock
        self._prefix = prefix  # the reference, when one call pulls several
        self._last: tuple[DownloadStatus, str] | None = None
        self._last_time = float("-inf")

    def show(self, item: DownloadProgress) -> None:
        if item.status.is_terminal:
            return  # the final line is printed by the command
        now = self._clock()
        changed = (item.status, item.message) != self._last
        if item.status is DownloadStatus.DOWNLOADING:
            status_changed = self._last is None or self._last[0] is not item.status
            due = now - self._last_time >= (self.MIN_GAP if changed else self.HEARTBEAT)
            if not (status_changed or due or (changed and is_notice(item))):
                return
        elif not changed:
            return
        self._last, self._last_time = (item.status, item.message), now
        line = f"{self._prefix}{item.status.value}: {item.message}"
        if item.status is DownloadStatus.DOWNLOADING and item.downloaded_bytes is not None:
            line += f" [{_progress_summary(item)}]"
        self._out.write(line + "\n")
        self._out.flush()


def _progress_summary(item: DownloadProgress) -> str:
    parts = []
    if item.percent is not None:
        parts.append(f"{item.percent:.1f}%")
    parts.append(f"{format_bytes(item.downloaded_bytes)} / {format_bytes(item.total_bytes)}")
    if item.speed_bps:
        parts.append(f"{format_bytes(item.speed_bps)}/s")
    if item.eta_seconds is not None:
        parts.append(f"ETA {format_seconds(item.eta_seconds)}")
    return ", ".join(parts)


# Words that mark a message the user should not miss (the engine reports retries, stalls and
# restarts as messages on DOWNLOADING items).
_NOTICE_WORDS = ("retry", "restart", "reconnect", "stall", "waiting", "paused")


def is_notice(item: DownloadProgress) -> bool:
    """A message the user should not miss: a log prints it at once, the bars keep it in view."""
    text = item.message.lower()
    return item.status is DownloadStatus.PAUSED or any(word in text for word in _NOTICE_WORDS)


# ---------------------------------------------------------------------------------------
# pull


class _Outcome:
    def __init__(self) -> None:
        self.interrupted_by: int | None = None  # the signal that stopped the downloads


class _Run:
    """One reference of the call: its arguments, its view and its last item."""

    def __init__(self, text: str, ref: Reference, options: dict[str, Any]) -> None:
        self.text = text
        self.ref = ref
        self.options = options
        self.view: View = QuietView()
        self.final: DownloadProgress | None = None


async def _consume(runs: list[_Run], token: str | None, base_url: str | None, outcome: _Outcome) -> None:
    """Every run at once; Ctrl-C (or SIGTERM) stops them all, keeping their partial data."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    installed: list[int] = []

    def interrupt(signum: int) -> None:
        outcome.interrupted_by = signum
        task.cancel()
        # A second Ctrl-C while the transfer winds down raises KeyboardInterrupt at once.
        for installed_signum in installed:
            loop.remove_signal_handler(installed_signum)
        installed.clear()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, interrupt, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # no signals here (not the main thread)
            pass
    try:
        await asyncio.gather(*(_consume_one(run, token, base_url) for run in runs))
    except asyncio.CancelledError:
        if outcome.interrupted_by is None:
            raise
        task.uncancel()  # handled: the command ends normally, with status 128 + signal
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def _consume_one(run: _Run, token: str | None, base_url: str | None) -> None:
    stream = download_model(run.ref.provider, run.ref.model, token=token, base_url=base_url, **run.options)
    try:
        async for item in stream:
            run.view.show(item)
            if item.status.is_terminal:
                run.final = item
                break
    finally:
        # Closing the generator stops the transfer; partial data stays for the next run.
        await stream.aclose()


def _choose_views(args: argparse.Namespace, stdout: TextIO, stderr: TextIO, runs: list[_Run]) -> list[View]:
    """One view per run: rich bars on a terminal (one bar per reference when several), plain
    log lines otherwise, JSON lines with --json (with a "ref" field when several)."""
    several = len(runs) > 1
    if args.json:
        return [JsonView(stdout, ref=run.text if several else None) for run in runs]
    if args.quiet:
        return [QuietView() for _ in runs]
    errors = terminal_console(stderr)
    if errors is not None:
        from ._bars import BarsView, RefBars

        if several:
            bars = RefBars(errors)
            return [bars.view(run.ref.model) for run in runs]
        return [BarsView(errors, label=runs[0].ref.model)]
    return [LogView(stderr, prefix=f"{run.ref.model}: " if several else "") for run in runs]


def pull(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run `modelpull pull`; the exit status."""
    def fail(message: str, status: int = EXIT_FAILED) -> int:
        print(f"error: {cli_words(message)}", file=stderr, flush=True)
        return status

    try:
        runs = [_Run(text, *download_arguments(args, text)) for text in args.refs]
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    if args.limit_rate is not None:
        from .transfer._rate import RateLimit

        shared = RateLimit(args.limit_rate)  # one cap for every download of the call
        for run in runs:
            run.options["limit_rate"] = shared
    if args.dry_run:
        return _dry_run(args, runs, stdout, stderr)

    views = _choose_views(args, stdout, stderr, runs)
    for run, view in zip(runs, views):
        run.view = view
    outcome = _Outcome()
    started = time.monotonic()

    def finish_views() -> None:
        for view in views:
            view.finish()

    try:
        asyncio.run(_consume(runs, args.token, args.base_url, outcome))
    except KeyboardInterrupt:  # Ctrl-C before our handler was in place, or a second one
        outcome.interrupted_by = outcome.interrupted_by or signal.SIGINT
    except BrokenPipeError:  # the reader of --json went away (`| head`): no one left to tell
        _silence_stdout()
        return EXIT_FAILED
    except ValueError as exc:  # an unknown provider, raised as AbstractCore raises it
        finish_views()
        return fail(str(exc))
    except Exception as exc:  # a bug: still one line (messages never hold a token)
        finish_views()
        return fail(f"unexpected {type(exc).__name__}: {exc}")
    finally:
        finish_views()

    if outcome.interrupted_by is not None:
        where = ", ".join(sorted({
            data_location(run.ref.provider, run.ref.model, args.base_url,
                          **{k: v for k, v in run.options.items() if k != "limit_rate"})
            for run in runs}))
        print(f"interrupted: partial data kept in {where}; run the same command again to resume",
              file=stderr, flush=True)
        return 128 + int(outcome.interrupted_by)
    status = EXIT_OK
    for run in runs:
        final = run.final
        prefix = f"{run.text}: " if len(runs) > 1 else ""
        if final is None:
            status = fail(f"{prefix}the download ended without a final status")
            continue
        if final.status is not DownloadStatus.COMPLETE:
            status = fail(prefix + final.message)
            continue
        if args.output is not None and run.ref.provider != "url":
            try:
                output = args.output.expanduser().absolute()
                final.local_path = str(_place_output(Path(final.local_path or ""), output))
            except OSError as exc:
                status = fail(f"cannot write {args.output}: {exc.strerror or exc}")
                continue
        if not args.quiet and not args.json:
            elapsed = time.monotonic() - started
            took = f" in {format_seconds(elapsed)}" if elapsed >= 1 else ""
            if plain_log(stderr):
                print(f"✓ {final.message}{took}", file=stderr, flush=True)
            else:
                from ._bars import done_line

                done_line(stderr, final.message, took)
        if not args.json:
            try:
                print(final.local_path, file=stdout, flush=True)
            except BrokenPipeError:
                _silence_stdout()
    return status


def _place_output(source: Path, output: Path) -> Path:
    """The downloaded file at `output` too: a hard link where the file system allows, else a copy."""
    import shutil

    output.parent.mkdir(parents=True, exist_ok=True)
    real = source.resolve()
    tmp = output.with_name(f".{output.name}.modelpull-tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(real, tmp)
    except OSError:
        shutil.copyfile(real, tmp)
    os.replace(tmp, output)
    return output


def _dry_run(args: argparse.Namespace, runs: list[_Run], stdout: TextIO, stderr: TextIO) -> int:
    """The plan of every reference, nothing downloaded: files, sizes, present, to fetch, free disk."""
    import shutil

    from ._api import plan_download
    from .providers._local import bytes_on_disk
    from .transfer import existing_ancestor, partial_paths

    status = EXIT_OK
    for run in runs:
        options = {k: v for k, v in run.options.items() if k != "limit_rate"}
        try:
            plan = asyncio.run(plan_download(run.ref.provider, run.ref.model, token=args.token,
                                             base_url=args.base_url, **options))
        except ModelPullError as exc:
            print(f"error: {run.text}: {cli_words(str(exc))}", file=stderr)
            status = EXIT_FAILED
            continue
        files = []
        for file in plan.files:
            part = partial_paths(file.dest)[0]
            try:
                partial = 0 if file.present else bytes_on_disk(part.stat())
            except OSError:
                partial = 0
            files.append({"name": file.name, "size": file.size, "present": file.present,
                          "partial_bytes": partial, "dest": str(file.dest)})
        needed = sum((f["size"] or 0) - f["partial_bytes"] for f in files if not f["present"])
        where = existing_ancestor(plan.local_path)
        free = shutil.disk_usage(where).free
        summary = {"ref": run.text, "label": plan.label, "local_path": str(plan.local_path), "files": files,
                   "total_bytes": plan.total_bytes, "to_download_bytes": needed, "free_bytes": free,
                   "fits": needed <= free}
        if args.json:
            stdout.write(json.dumps(summary) + "\n")
            continue
        print(f"{plan.label} -> {plan.local_path}", file=stdout)
        for file in files:
            state = "present" if file["present"] else (
                f"partial, {format_bytes(file['partial_bytes'])} here" if file["partial_bytes"] else "to fetch")
            print(f"  {file['name']}  {format_bytes(file['size'])}  {state}", file=stdout)
        present = sum(1 for f in files if f["present"])
        print(f"  {len(files)} file(s), {present} already here; {format_bytes(needed)} to download, "
              f"{format_bytes(free)} free in {where}" + ("" if needed <= free else "  NOT ENOUGH SPACE"),
              file=stdout)
        if needed > free:
            status = EXIT_FAILED
    return status


def _silence_stdout() -> None:
    # Python would complain again at exit while flushing the dead pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# ---------------------------------------------------------------------------------------
# serve


def serve(argv: Sequence[str]) -> int:
    """Hand `modelpull serve ...` to the server, which is imported only now."""
    try:
        from .server.cli import serve_main
    except ModuleNotFoundError as exc:
        if exc.name in ("modelpull.server", "modelpull.server.cli"):
            print("the server is not installed in this build", file=sys.stderr)
            return EXIT_USAGE
        print(f"error: the server needs the Python package '{exc.name}'; install it and retry",
              file=sys.stderr)
        return EXIT_USAGE
    status = serve_main(list(argv))
    return int(status or 0)


# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The `modelpull` command; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list and args_list[0] == "serve":
            return serve(args_list[1:])
        parser = build_parser()
        args = parser.parse_args(args_list)
        if args.command == "pull":
            return pull(args, sys.stdout, sys.stderr)
        if args.command is not None:
            from . import _cli_local

            return _cli_local.run(args, sys.stdout, sys.stderr)
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before any download started: nothing to keep
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    """The `modelpull` executable (and `python -m modelpull`): main(), then exit with its status."""
    status = main()
    # The interpreter's last garbage collections would walk every object of every imported
    # module (~20 ms, an eighth of a small download's run) to free what the process is about
    # to drop anyway. Frozen objects are left alone; by now every download has closed its files
    # and sockets, and Python still flushes stdout and stderr.
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    run()
