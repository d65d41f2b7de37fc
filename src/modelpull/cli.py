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
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from . import __version__
from ._api import data_location, download_model
from ._progress import DownloadProgress, DownloadStatus
from ._refs import Reference, parse_reference
from ._units import format_seconds

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
    pull.add_argument("ref", help="what to download: an http(s) URL, hf:..., mlx:... or ollama:...")
    pull.add_argument("--to", metavar="DIR", type=Path,
                      help="where files go: for URLs this folder (default: $MODELPULL_HOME or ./models); "
                           "for hf:/mlx: plain files here instead of the Hugging Face cache; for ollama: "
                           "(--direct) this Ollama store instead of $OLLAMA_MODELS")
    pull.add_argument("--sha256", metavar="HEX", type=_sha256,
                      help="expected sha256 of the file; a mismatch deletes it and fails")
    pull.add_argument("--connections", metavar="N", type=_connections,
                      help="connections per large file (default: 16)")
    pull.add_argument("--token", metavar="TOKEN",
                      help="access token for the source (default: from the environment, e.g. HF_TOKEN)")
    pull.add_argument("--base-url", metavar="URL", type=_base_url,
                      help="the source's endpoint (Hugging Face mirror, Ollama server)")
    pull.add_argument("--revision", metavar="REV",
                      help="branch, tag or commit (hf: and mlx: references; same as @REV)")
    pull.add_argument("--direct", action="store_true",
                      help="ollama: fetch from the registry into Ollama's store without a running Ollama")
    output = pull.add_mutually_exclusive_group()
    output.add_argument("-q", "--quiet", action="store_true",
                        help="print only the local path (or one error line)")
    output.add_argument("--json", action="store_true",
                        help="print one JSON progress object per line on stdout, nothing else")

    from . import _cli_local

    _cli_local.add_commands(commands)
    commands.add_parser("serve", help="run the download server (modelpull serve --help)", add_help=False)
    return parser


def download_arguments(args: argparse.Namespace) -> tuple[Reference, dict[str, Any]]:
    """The reference and the keyword arguments for download_model(); UsageError if inconsistent."""
    try:
        ref = parse_reference(args.ref)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = dict(ref.options)
    if args.revision is not None:
        if ref.provider not in _HUB_PROVIDERS:
            raise UsageError("--revision applies to hf: and mlx: references only")
        if not args.revision.strip():
            raise UsageError("--revision needs a branch, tag or commit")
        if options.get("revision") not in (None, args.revision):
            raise UsageError(
                f"two revisions given: @{options['revision']} in the reference and --revision {args.revision}"
            )
        options["revision"] = args.revision
    if args.direct:
        if ref.provider != "ollama":
            raise UsageError("--direct applies to ollama: references only")
        options["direct"] = True
    if args.base_url is not None and ref.provider == "url":
        raise UsageError("--base-url does not apply to a URL reference; the URL is the source")
    if args.to is not None:
        if ref.provider in _HUB_PROVIDERS:
            # A folder named by hand means "the files here", not a Hub cache inside it.
            options["local_dir"] = args.to.expanduser()
        elif ref.provider == "ollama":
            options["models_path"] = args.to.expanduser()
        else:
            options["models_dir"] = args.to.expanduser()
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
    """One `DownloadProgress.to_dict()` per line, flushed, for scripts."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def show(self, item: DownloadProgress) -> None:
        self._out.write(json.dumps(item.to_dict(), separators=(",", ":")) + "\n")
        self._out.flush()


# ---------------------------------------------------------------------------------------
# pull


class _Outcome:
    def __init__(self) -> None:
        self.final: DownloadProgress | None = None
        self.interrupted_by: int | None = None  # the signal that stopped the download


async def _consume(ref: Reference, options: dict[str, Any], token: str | None, base_url: str | None,
                   view: View, outcome: _Outcome) -> None:
    stream = download_model(ref.provider, ref.model, token=token, base_url=base_url, **options)
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
        async for item in stream:
            view.show(item)
            if item.status.is_terminal:
                outcome.final = item
                break
    except asyncio.CancelledError:
        if outcome.interrupted_by is None:
            raise
        task.uncancel()  # handled: the command ends normally, with status 128 + signal
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        # Closing the generator stops the transfer; partial data stays for the next run.
        await stream.aclose()


def _choose_view(args: argparse.Namespace, stdout: TextIO, stderr: TextIO, label: str) -> View:
    if args.json:
        return JsonView(stdout)
    if args.quiet:
        return QuietView()
    from ._bars import BarsView, LogView, console  # rich costs a twentieth of a second to import

    errors = console(stderr)
    if errors.is_terminal:
        return BarsView(errors, label=label)
    return LogView(errors)


def pull(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run `modelpull pull`; the exit status."""
    def fail(message: str, status: int = EXIT_FAILED) -> int:
        print(f"error: {message}", file=stderr, flush=True)
        return status

    try:
        ref, options = download_arguments(args)
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)

    view = _choose_view(args, stdout, stderr, label=ref.model)
    outcome = _Outcome()
    started = time.monotonic()
    try:
        asyncio.run(_consume(ref, options, args.token, args.base_url, view, outcome))
    except KeyboardInterrupt:  # Ctrl-C before our handler was in place, or a second one
        outcome.interrupted_by = outcome.interrupted_by or signal.SIGINT
    except BrokenPipeError:  # the reader of --json went away (`| head`): no one left to tell
        _silence_stdout()
        return EXIT_FAILED
    except ValueError as exc:  # an unknown provider, raised as AbstractCore raises it
        view.finish()
        return fail(str(exc))
    except Exception as exc:  # a bug: still one line (messages never hold a token)
        view.finish()
        return fail(f"unexpected {type(exc).__name__}: {exc}")
    finally:
        view.finish()

    if outcome.interrupted_by is not None:
        where = data_location(ref.provider, ref.model, args.base_url, **options)
        print(f"interrupted: partial data kept in {where}; run the same command again to resume",
              file=stderr, flush=True)
        return 128 + int(outcome.interrupted_by)
    final = outcome.final
    if final is None:
        return fail("the download ended without a final status")
    if final.status is not DownloadStatus.COMPLETE:
        return fail(final.message)
    if not args.quiet and not args.json:
        from ._bars import done_line

        elapsed = time.monotonic() - started
        done_line(stderr, final.message, f" in {format_seconds(elapsed)}" if elapsed >= 1 else "")
    if not args.json:
        try:
            print(final.local_path, file=stdout, flush=True)
        except BrokenPipeError:
            _silence_stdout()
    return EXIT_OK


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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
