"""Structured logs: every record carries the current trace and span ids, as text or one JSON per line.

With ids in the logs, a log line found in Loki or Elasticsearch leads to its trace, and back. The server
logs no line per request at INFO: request-level detail belongs in traces and metrics.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from opentelemetry import trace

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(trace_suffix)s"
# LogRecord attributes that are not "extra" fields passed by the caller.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class TraceContextFilter(logging.Filter):
    """Adds `trace_id` and `span_id` (hex, "" outside a span) and a text `trace_suffix` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate; never drops a record."""
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
            record.trace_suffix = f" trace_id={record.trace_id} span_id={record.span_id}"
        else:
            record.trace_id = record.span_id = record.trace_suffix = ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, trace ids, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise one record."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "trace_id", ""):
            entry["trace_id"] = record.trace_id
            entry["span_id"] = record.span_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and key not in ("trace_id", "span_id", "trace_suffix"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class WorkerFilter(logging.Filter):
    """Adds `worker` (its index under `recserve serve --workers`): several processes share one stderr."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate; never drops a record."""
        record.worker = self.index
        return True


def configure_logging(level: str, log_format: str = "text", worker: int | None = None) -> None:
    """Log to stderr at `level`, as `text` or `json`, with trace context (and worker) on every record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    text_format = TEXT_FORMAT
    if worker is not None:
        handler.addFilter(WorkerFilter(worker))
        text_format = TEXT_FORMAT.replace("%(levelname)s ", "%(levelname)s [worker %(worker)d] ")
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text_format))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
