"""A download speed cap shared by every connection of a call (`--limit-rate`, `limit_rate=`)."""
from __future__ import annotations

import threading
import time
from typing import Callable

BURST_SECONDS = 0.25  # how far a quiet spell lets the next reads run ahead of the rate


class RateLimit:
    """A token bucket in bytes per second. `take(n)` blocks the calling I/O thread until `n`
    bytes fit under the rate; one instance shared by several downloads caps them together."""

    def __init__(self, bytes_per_second: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not bytes_per_second > 0:
            raise ValueError(f"a rate limit must be more than 0 bytes per second, got {bytes_per_second!r}")
        self.bytes_per_second = float(bytes_per_second)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._free_at = clock()  # when the bytes granted so far have been "paid for"
        self.taken = 0

    def take(self, count: int) -> None:
        with self._lock:
            now = self._clock()
            start = max(self._free_at, now - BURST_SECONDS)
            self._free_at = start + count / self.bytes_per_second
            self.taken += count
            wait = self._free_at - now
        if wait > 0:
            self._sleep(wait)

    @classmethod
    def of(cls, value: "RateLimit | float | int | None") -> "RateLimit | None":
        """A limit from an option: an instance (shared), a number of bytes per second, or None."""
        if value is None or isinstance(value, RateLimit):
            return value
        return cls(float(value))
