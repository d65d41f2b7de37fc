"""`modelpull pull --json` in a child process, stopped with Ctrl-C (SIGINT) mid-download."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def pull_interrupted(args: list[str], env: dict[str, str], cwd: Path, min_bytes: int) -> tuple[int, str]:
    """Run `modelpull pull --json ARGS`, send SIGINT once `min_bytes` are down: (exit status, stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "modelpull", "pull", "--json", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            item = json.loads(line)
            if item["status"] == "downloading" and (item["downloaded_bytes"] or 0) >= min_bytes:
                break
        else:
            pytest.fail(f"no progress before the stream ended: {process.stderr.read()}")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr
