"""Waiting for what a server does in the background: a deadline, never a timing assertion."""
from __future__ import annotations

import time
from typing import Callable


def eventually(condition: Callable[[], object], timeout: float = 20.0) -> bool:
    """Poll `condition` every 50 ms until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
