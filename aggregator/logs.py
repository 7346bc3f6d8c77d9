"""Output set-up shared by every command: log events one per line (JSON off a terminal), and a
quiet exit when the reader of stdout has gone (`edges | head`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else passed via `extra=` is an event field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with `extra=` fields as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update(_extra_fields(record))
        if record.exc_info and record.exc_info[1] is not None:
            event["error"] = _one_line(record.exc_info[1])
        return json.dumps(event, default=str)


class TextFormatter(logging.Formatter):
    """`HH:MM:SS level message key=value ...`, for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in _extra_fields(record).items())
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{clock} {record.levelname.lower():7} {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            line += f" error={_one_line(record.exc_info[1])}"
        return f"{line} {fields}".rstrip()


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRS}


def _one_line(error: BaseException) -> str:
    # Tracebacks are multi-line and can carry local values; an event names the error only.
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def configure_logging(
    log_format: str = "auto", *, stream: TextIO | None = None, level: int = logging.INFO
) -> None:
    """Route the root logger to `stream` (stderr) as JSON or text; `auto` picks by isatty."""
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries' own loggers: chatty, and httpx logs every request's URL (a Slack
    # webhook URL is a secret) at INFO.
    for noisy in ("grpc", "psycopg", "pgserver", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def stdout_reader_gone() -> None:
    """After a BrokenPipeError: point stdout at nothing, so that the exit's flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
