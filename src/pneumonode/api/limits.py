"""Request rate limits (the upload): a sliding one-minute window per client address."""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["RateLimiter"]


class RateLimiter:
    """At most ``per_minute`` events per key in any 60 seconds."""

    def __init__(self, per_minute: int, window: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window = window
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """Record an event for ``key`` and return 0, or, over the limit, the seconds to wait
        (and record nothing)."""
        now = time.monotonic()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.per_minute:
                return events[0] + self.window - now
            events.append(now)
            if len(self._events) > 10_000:  # forget idle clients
                for idle in [k for k, v in self._events.items() if not v]:
                    del self._events[idle]
            return 0.0
