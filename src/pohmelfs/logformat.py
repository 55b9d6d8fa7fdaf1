"""Log lines as JSON objects (``pohmelfs --log-format json``): one per line, with the
time (ISO 8601, UTC), level, logger, message and, for an exception, its traceback;
for log collectors that parse rather than grep."""

from __future__ import annotations

import datetime
import json
import logging

TEXT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str, form: str) -> None:
    """Log to stderr at ``level``, as ``form`` (text or json)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
