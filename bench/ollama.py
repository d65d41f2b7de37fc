"""Issue 4's benchmark: an Ollama model pulled straight from the registry, modelpull vs one connection.

The registry is the test suite's fake (tests/fakes/ollama.py, aiohttp in a background thread
of this process); it answers the manifest and redirects every blob with a 307 to a private
nginx whose ``limit_rate`` caps each connection (default 20 MiB/s), serving the blobs where
Ollama's real CDN keeps them (``/ollama/docker/registry/v2/blobs/sha256/<xx>/<hex>/data``).
The model is a ``--size-mib`` GGUF model layer (default 1 GiB) plus Ollama's small template,
license and params layers and a config blob.

Each run, taking turns (round-robin, so drift on the machine hits both alike):

- modelpull, direct mode, in its own process: ``modelpull.pull("ollama:<name>", direct=True,
  registry=..., models_path=<empty store>)`` - every blob through the transfer engine, sha256
  verified, written in Ollama's store layout; with its default connections (8), and again
  with each ``--connections N`` (default: 16);
- ``curl -L -o``: the model layer's blob URL, following the same 307 to the same CDN, on one
  connection, no hashing: the floor for a single-connection client.

Medians of ``--runs`` (default 3) are printed as a table with the ratios (target: modelpull ≥ 6×
faster), then as markdown. Wall times include modelpull's start (interpreter and imports, about
half a second), which weighs on small ``--size-mib`` runs.

    .venv/bin/python bench/ollama.py                            # 1 GiB layer, 3 runs (~3 min)
    .venv/bin/python bench/ollama.py --size-mib 128 --runs 1    # proves it works (~15 s)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import _nginx
from _nginx import MiB

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fakes.ollama import Blob, FakeModel, FakeOllamaRegistry, make_model, write_gguf  # noqa: E402

MODEL_NAME = "benchllama:latest"
TARGET_RATIO = 6.0
CHILD_ENV = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
PULL_WRAPPER = """\
import sys
import modelpull
name, registry, store, connections = sys.argv[1:5]
options = {"connections": int(connections)} if connections else {}
modelpull.pull("ollama:" + name, direct=True, registry=registry, models_path=store, **options)
"""
CURL = "curl -L (1 connection)"


def cdn_file(root: Path, blob: Blob) -> Path:
    return root / FakeOllamaRegistry.cdn_path(blob).lstrip("/")


def build_model(root: Path, size: int) -> FakeModel:
    """The model's blobs laid out under `root` the way Ollama's CDN serves them."""
    print(f"writing a {_nginx.fmt_bytes(size)} GGUF model layer ...", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    staging = write_gguf(root / "model.gguf", size, seed=4, name="benchllama")
    model = make_model(MODEL_NAME, model_file=staging)
    for blob in model.blobs:
        target = cdn_file(root, blob)
        target.parent.mkdir(parents=True, exist_ok=True)
        if blob.path is not None:
            os.replace(blob.path, target)
        else:
            target.write_bytes(blob.data or b"")
    return model


def run_modelpull(
    registry: FakeOllamaRegistry, model: FakeModel, store: Path, connections: int | None, timeout: float
) -> _nginx.Measurement:
    measured = _nginx.run_measured(
        [sys.executable, "-c", PULL_WRAPPER, MODEL_NAME, registry.base_url, str(store), str(connections or "")],
        env=CHILD_ENV, timeout=timeout,
    )
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "benchllama" / "latest"
    if manifest.read_bytes() != model.manifest:
        raise RuntimeError(f"modelpull did not write the manifest at {manifest}")
    for blob in model.blobs:
        path = store / "blobs" / f"sha256-{blob.hex}"
        if not path.is_file() or path.stat().st_size != blob.size:
            raise RuntimeError(f"modelpull did not write {path}")
    return measured


def run_curl(registry: FakeOllamaRegistry, model: FakeModel, out: Path, timeout: float) -> _nginx.Measurement:
    target = out / "model.bin"
    measured = _nginx.run_measured(
        ["curl", "-sS", "-f", "-L", "-o", str(target), registry.blob_url(model, model.model_layer)],
        env=CHILD_ENV, timeout=timeout,
    )
    if target.stat().st_size != model.model_layer.size:
        raise RuntimeError(f"curl wrote {target.stat().st_size} bytes, expected {model.model_layer.size}")
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="model layer size (default 1024)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit-rate", default="20m", help="nginx limit_rate per connection (default 20m)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the blobs and downloads go")
    parser.add_argument("--connections", type=int, action="append", default=None,
                        help="also run modelpull with this many connections (repeatable; default: 16)")
    args = parser.parse_args()
    variants: dict[str, int | None] = {"modelpull (direct)": None}
    for count in args.connections if args.connections is not None else [16]:
        variants[f"modelpull --connections {count}"] = count

    _nginx.ensure_tools(("nginx", "curl"))
    work = Path(tempfile.mkdtemp(prefix="modelpull-bench-ollama-", dir=args.workdir))
    try:
        root = work / "cdn"
        model = build_model(root, args.size_mib * MiB)
        size = model.model_layer.size
        for blob in model.blobs:
            _nginx.warm_page_cache(cdn_file(root, blob))
        # Nothing here should be slower than a quarter of one capped connection.
        timeout = max(120.0, size / (5 * MiB))
        results: dict[str, list[_nginx.Measurement]] = {name: [] for name in [*variants, CURL]}
        with _nginx.start_nginx(root, limit_rate=args.limit_rate) as nginx, \
                FakeOllamaRegistry(cdn_url=nginx.base_url) as registry:
            registry.add(model)
            print(f"registry {registry.base_url}, CDN {nginx.base_url} (limit_rate {args.limit_rate}), "
                  f"model layer {_nginx.fmt_bytes(size)}, {args.runs} runs", flush=True)
            for run in range(args.runs):
                for tool in results:
                    out = work / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    os.sync()
                    if tool == CURL:
                        measured = run_curl(registry, model, out, timeout)
                    else:
                        measured = run_modelpull(registry, model, out, variants[tool], timeout)
                    results[tool].append(measured)
                    print(f"  run {run + 1}/{args.runs}  {tool:30} {measured.wall_seconds:7.2f} s"
                          f"  {size / MiB / measured.wall_seconds:6.0f} MiB/s  CPU {measured.cpu_seconds:5.2f} s"
                          f"  RSS {_nginx.fmt_mb(measured.peak_rss_bytes)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    medians = {tool: _nginx.median(m.wall_seconds for m in done) for tool, done in results.items()}
    headers = ["tool", "median wall", "MiB/s (model layer)", "CPU", "peak RSS", "runs"]
    rows = [
        [tool, _nginx.fmt_seconds(medians[tool]), f"{size / MiB / medians[tool]:.0f}",
         _nginx.fmt_seconds(_nginx.median(m.cpu_seconds for m in done)),
         _nginx.fmt_mb(max(m.peak_rss_bytes for m in done)),
         " ".join(f"{m.wall_seconds:.2f}" for m in done)]
        for tool, done in results.items()
    ]
    summary = []
    for tool in variants:
        speedup = medians[CURL] / medians[tool]
        summary.append([f"curl wall ÷ {tool} wall", _nginx.fmt_ratio(speedup), f"≥ {TARGET_RATIO:.0f}×",
                        "yes" if speedup >= TARGET_RATIO else "NO"])
    where = (f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
             f"{_nginx.fmt_bytes(size)} model layer + {len(model.blobs) - 1} small blobs, "
             f"nginx limit_rate {args.limit_rate}, medians of {args.runs}")
    print()
    print(_nginx.format_table(headers, rows))
    print()
    print(_nginx.format_table(["ratio", "value", "target", "met"], summary))
    print(f"\n<!-- bench/ollama.py: {where} -->")
    print(_nginx.format_markdown_table(headers, rows))
    print()
    print(_nginx.format_markdown_table(["ratio", "value", "target", "met"], summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
