"""A live one-line status for `edge-aggregator --simulate`.

Redrawn in place on a terminal; a log line every few seconds otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger(__name__)

_CLEAR_LINE = "\r\x1b[K"


@dataclass(frozen=True)
class RunStats:
    flows_received: int
    edges: int
    new_edges: int


class StatusLine:
    """Redraws `flows … · …/s · edges … · new …` every second until stopped."""

    def __init__(
        self,
        stats: Callable[[], RunStats],
        stream: TextIO,
        *,
        interval: float = 1.0,
        log_every: float = 15.0,
    ) -> None:
        self._stats = stats
        self._stream = stream
        self._interval = interval
        self._log_every = log_every
        self._in_place = stream.isatty()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self) -> None:
        if self._in_place:
            for handler in logging.getLogger().handlers:
                handler.addFilter(self._clear_before_log)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2)
        if self._in_place:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(self._clear_before_log)
            self._stream.write("\n")
            self._stream.flush()

    def _clear_before_log(self, record: logging.LogRecord) -> bool:
        # A log line written after the status line would run into it; the next tick redraws it.
        self._stream.write(_CLEAR_LINE)
        return True

    def _run(self) -> None:
        last = self._stats()
        last_at = time.monotonic()
        last_logged = last_at
        while not self._stopping.wait(self._interval):
            now = time.monotonic()
            stats = self._stats()
            rate = (stats.flows_received - last.flows_received) / max(now - last_at, 1e-6)
            last, last_at = stats, now
            if self._in_place:
                self._stream.write(_CLEAR_LINE + format_status(stats, rate))
                self._stream.flush()
            elif now - last_logged >= self._log_every:
                last_logged = now
                log.info(
                    "simulator progress",
                    extra={
                        "flows_received": stats.flows_received,
                        "flows_per_s": round(rate),
                        "edges": stats.edges,
                        "new_edges": stats.new_edges,
                    },
                )


def format_status(stats: RunStats, rate: float) -> str:
    return (
        f"flows {stats.flows_received:,} · {rate:,.0f}/s · "
        f"edges {stats.edges:,} · new {stats.new_edges:,}"
    )
