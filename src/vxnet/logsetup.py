"""Logging of the server and the agent: text or JSON lines, and the level re-read on SIGHUP.

- `configure(level, fmt)`: the root logger at `level` with one stderr handler; `fmt` "text"
  (`<time> <LEVEL> <logger> <message>`) or "json" (one object per line: `ts` (ISO 8601 UTC),
  `level`, `logger`, `msg`, and `exc` with the traceback when there is one). JSON lines are
  for log shippers; both formats carry the same message text, so a request id found in one is
  found in the other.
- `reload_on_sighup(read_level)`: on SIGHUP, `read_level()` is called (it re-reads the
  configuration file) and the root logger gets the level it returns (None: unchanged). A bad
  file or level is logged and changes nothing: a typo must not take the process down.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

FORMATS = ("text", "json")
LEVELS = ("critical", "error", "warning", "info", "debug")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

log = logging.getLogger("vxnet.logging")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def check(level: str, fmt: str = "text") -> None:
    """ValueError unless `level` and `fmt` are known."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def configure(level: str, fmt: str = "text") -> None:
    """Root logger at `level`, one stderr handler in format `fmt` (replacing earlier handlers)."""
    check(level, fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())


def set_level(level: str | None) -> bool:
    """Apply a level read from configuration; False (and a log line) when it is not valid."""
    if level is None:
        return True
    if level.lower() not in LEVELS:
        log.error("log level %r is not one of %s: unchanged", level, ", ".join(LEVELS))
        return False
    logging.getLogger().setLevel(level.upper())
    log.warning("log level now %s", level.lower())
    return True


def reload_on_sighup(read_level: Callable[[], str | None]) -> None:
    """On SIGHUP, set the root level to `read_level()` (errors logged, level unchanged)."""

    def handler(signum: int, frame: Any) -> None:
        try:
            set_level(read_level())
        except Exception as e:  # noqa: BLE001 - a bad file must not kill the process
            log.error("SIGHUP: cannot re-read the log level: %s", e)

    signal.signal(signal.SIGHUP, handler)
