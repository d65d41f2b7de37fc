"""Issue 14's inventory benchmark: how fast `modelpull list` and `modelpull verify` are.

    (a) list: a Hub cache of 200 repos x 20 files (huggingface_hub's layout: blobs, relative
        snapshot links, refs, two revisions sharing most blobs in every tenth repo) and an Ollama
        store of 50 models (manifests sharing a template and a license blob), listed warm.
        Timed in-process (Inventory.summary()) and as the whole command `modelpull list --json`
        (a fresh interpreter: imports included). Target: <= 1 s warm.
    (b) verify: 2 GiB as two 1 GiB URL downloads with their recorded sha256, page cache warm,
        hashed by `modelpull verify --all` against `sha256sum` on the same two files, runs
        interleaved. Target: modelpull's throughput >= 90% of sha256sum's. Reported also for one
        2 GiB file (sha256sum hashes one file at a time; modelpull hashes two files on two cores).

    .venv/bin/python bench/inventory.py               # the real thing: ~2 GiB of disk
    .venv/bin/python bench/inventory.py --scale 0.01  # 20 MiB: proves the script works

Medians over --runs; on a shared machine quote the ratio, not a wall time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GiB = 1024 ** 3


def build_hub_cache(cache: Path, repos: int = 200, files: int = 20) -> None:
    """Blobs, snapshots and refs exactly as huggingface_hub writes them (small blobs: listing cost only)."""
    rng = random.Random(14)
    for index in range(repos):
        repo = cache / f"models--org{index % 17}--model-{index}"
        commits = [hashlib.sha1(f"{index}-{n}".encode()).hexdigest() for n in range(2 if index % 10 == 0 else 1)]
        for revision, commit in enumerate(commits):
            snapshot = repo / "snapshots" / commit
            for number in range(files):
                data = rng.randbytes(64) if revision == 0 or number % 5 else rng.randbytes(65)
                lfs = number % 4 == 0
                etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(
                    b"blob %d\0" % len(data) + data).hexdigest()
                blob = repo / "blobs" / etag
                blob.parent.mkdir(parents=True, exist_ok=True)
                if not blob.exists():
                    blob.write_bytes(data)
                name = f"shard-{number:03d}.safetensors" if lfs else f"sub/dir/file-{number:03d}.json"
                link = snapshot / name
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.path.relpath(blob, link.parent), link)
            ref = repo / "refs" / ("main" if revision == 0 else "dev")
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)


def build_ollama_store(store: Path, models: int = 50) -> None:
    shared = [(f"application/vnd.ollama.image.{kind}", f"{kind} text".encode()) for kind in ("template", "license")]
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    for index in range(models):
        layers = [("application/vnd.ollama.image.model", os.urandom(256)), *shared,
                  ("application/vnd.ollama.image.params", json.dumps({"n": index}).encode())]
        config = ("application/vnd.docker.container.image.v1+json", json.dumps({"model": index}).encode())
        descriptors = []
        for media_type, data in [*layers, config]:
            digest = hashlib.sha256(data).hexdigest()
            (store / "blobs" / f"sha256-{digest}").write_bytes(data)
            descriptors.append({"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)})
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": descriptors[-1], "layers": descriptors[:-1]}
        path = store / "manifests" / "registry.ollama.ai" / "library" / f"model{index}" / "latest"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))


def write_url_file(folder: Path, name: str, size: int) -> None:
    """A finished URL download and its record (as the URL provider writes them)."""
    digest = hashlib.sha256()
    chunk = os.urandom(16 * 1024 * 1024)
    with open(folder / name, "wb") as handle:
        left = size
        while left:
            part = chunk[: min(left, len(chunk))]
            handle.write(part)
            digest.update(part)
            left -= len(part)
    book = folder / ".modelpull" / "sources"
    book.mkdir(parents=True, exist_ok=True)
    url = f"https://example.com/{name}"
    (book / f"{name}.json").write_text(json.dumps({
        "url": url, "url_sha256": hashlib.sha256(url.encode()).hexdigest(), "size": size,
        "sha256": digest.hexdigest(), "complete": True}))


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 2 GiB verified")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from modelpull._inventory import Inventory

    with tempfile.TemporaryDirectory(prefix="modelpull-bench-inventory-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "HF_HUB_CACHE": str(root / "hub"), "OLLAMA_MODELS": str(root / "ollama"),
               "MODELPULL_HOME": str(root / "home")}
        (root / "home").mkdir()
        build_hub_cache(root / "hub")
        build_ollama_store(root / "ollama")
        inventory = Inventory(roots={"huggingface": [root / "hub"], "ollama": [root / "ollama"], "url": []})
        summary = inventory.summary()
        print(f"(a) list: {len(summary['models'])} models "
              f"({sum(1 for m in summary['models'] if m['provider'] == 'huggingface')} Hub revisions, "
              f"{sum(1 for m in summary['models'] if m['provider'] == 'ollama')} Ollama models)")
        in_process = []
        for _ in range(args.runs):
            started = time.perf_counter()
            inventory.summary()
            in_process.append(time.perf_counter() - started)
        command = [sys.executable, "-m", "modelpull", "list", "--json"]
        timed(command, env)  # warm-up
        whole = [timed(command, env) for _ in range(args.runs)]
        print(f"    Inventory.summary() in-process  median {statistics.median(in_process):.3f} s "
              f"(min {min(in_process):.3f}, max {max(in_process):.3f})")
        print(f"    `modelpull list --json` process  median {statistics.median(whole):.3f} s "
              f"(min {min(whole):.3f}, max {max(whole):.3f})  target <= 1 s")

        size = int(2 * GiB * args.scale)
        for layout, names in (("two 1 GiB files", ["a.bin", "b.bin"]), ("one 2 GiB file", ["c.bin"])):
            folder = root / f"home-{len(names)}"
            folder.mkdir()
            for name in names:
                write_url_file(folder, name, size // len(names))
            files = [str(folder / n) for n in names]
            # Only these files: the Hub cache and Ollama store of (a) are not verified here.
            verify_env = {**env, "MODELPULL_HOME": str(folder), "HF_HUB_CACHE": str(root / "none"),
                          "OLLAMA_MODELS": str(root / "none")}
            verify = [sys.executable, "-m", "modelpull", "verify", "--all"]
            checksum = ["sha256sum", *files]
            timed(checksum, verify_env)  # page cache warm for both
            ours, theirs = [], []
            for _ in range(args.runs):  # interleaved: a drifting machine hits both alike
                ours.append(timed(verify, verify_env))
                theirs.append(timed(checksum, verify_env))
            ratios = [t / o for o, t in zip(ours, theirs)]  # throughput ratio = their time / our time
            print(f"(b) verify, {layout} ({size / GiB:.2f} GiB): modelpull median {statistics.median(ours):.2f} s "
                  f"({size / statistics.median(ours) / 1e6:.0f} MB/s), sha256sum median "
                  f"{statistics.median(theirs):.2f} s ({size / statistics.median(theirs) / 1e6:.0f} MB/s); "
                  f"throughput ratio median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
                  f"max {max(ratios):.2f})  target >= 0.90")
            for name in names:
                (folder / name).unlink()


if __name__ == "__main__":
    main()
