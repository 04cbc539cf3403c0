"""Log lines as text or JSON, each with the request id, and never with a secret in them.

``configure_logging("json")`` (or ``LLMRELAY_LOG_FORMAT=json``) sends every logger, uvicorn's
included, through one stderr handler. The request id comes from a context variable the pipeline's
``admitted`` hook sets, so any line logged while serving a request carries it.

The gateway never logs a key, a ``?key=`` value or a prompt in the first place; the formatters'
redaction is a second line of defence against a library that might (an exception message quoting
a URL, a header dump), and it runs on the final text, tracebacks included.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import orjson

from llmrelay.observability.observer import Observer

if TYPE_CHECKING:
    from llmrelay.core.exchange import Exchange

FORMAT_ENV = "LLMRELAY_LOG_FORMAT"
LEVEL_ENV = "LLMRELAY_LOG_LEVEL"
FORMATS = ("text", "json")

request_id: ContextVar[str | None] = ContextVar("llmrelay_request_id", default=None)

REDACTED = "[redacted]"
_SECRET_PATTERNS = (
    # Query parameters that carry keys: ?key=, &api_key=, ...
    (re.compile(r"([?&](?:key|api[_-]?key|apikey|token|access_token)=)[^&\s\"'#]+", re.I), r"\1"),
    # Authorization schemes.
    (re.compile(r"\b((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1"),
    # Header-style "name: value" / "name=value" pairs of the key headers.
    (
        re.compile(
            r"((?:x-api-key|apikey|api-key|x-goog-api-key|authorization|admin_key)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}&]+",
            re.I,
        ),
        r"\1",
    ),
    # Key shapes: the gateway's own (lr-...), OpenAI/Anthropic (sk-...), Google (AIza...).
    (re.compile(r"\b(lr|sk)-[A-Za-z0-9_-]{12,}"), r"\1-"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), ""),
)

# LogRecord's own attributes: everything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "request_id", "taskName"}
)
# Added by our text formatter, or by uvicorn for its coloured console output.
_NOT_EXTRAS = frozenset({"rid", "color_message"})


def redact(text: str) -> str:
    """``text`` with anything shaped like a key or a credential replaced by ``[redacted]``."""
    for pattern, keep in _SECRET_PATTERNS:
        text = pattern.sub(keep + REDACTED, text)
    return text


class RequestIdFilter(logging.Filter):
    """Puts the current request's id (or None) on every record as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time level logger [request id] message``, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rid)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        record.rid = f" [{rid}]" if rid else ""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        for name, value in record.__dict__.items():
            if name not in _RECORD_FIELDS and name not in _NOT_EXTRAS:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        text = orjson.dumps(entry, default=repr).decode()
        return redact(text)


class RequestLogContext(Observer):
    """Binds the request id to the serving task's context once the request is admitted."""

    def admitted(self, exchange: Exchange) -> None:
        request_id.set(exchange.id)


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format is one of {', '.join(FORMATS)}, not {fmt!r}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(
    fmt: str = "text", level: str | int = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Route every logger (uvicorn's too) through one handler in ``fmt``, on stderr by default."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(RequestIdFilter())
    handler.set_name("llmrelay")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "llmrelay":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.access"):
        # uvicorn installs handlers of its own; send its lines through ours instead. An access
        # log that uvicorn switched off (no handlers, not propagating) stays off.
        uvicorn_logger = logging.getLogger(name)
        if uvicorn_logger.handlers:
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True
    return handler


def configure_logging_from_environment(env: Mapping[str, str]) -> logging.Handler | None:
    """``LLMRELAY_LOG_FORMAT=json|text`` (and ``LLMRELAY_LOG_LEVEL``); nothing when unset."""
    fmt = env.get(FORMAT_ENV)
    if not fmt:
        return None
    return configure_logging(fmt.lower(), env.get(LEVEL_ENV, "INFO"))


def uvicorn_log_config(fmt: str, level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``uvicorn.run(log_config=...)`` in ``fmt``; uvicorn
    applies it in every worker, so ``--workers N`` logs the same way."""
    make_formatter(fmt)  # validates fmt
    formatter_class = "JsonFormatter" if fmt == "json" else "TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"llmrelay": {"()": f"{__name__}.{formatter_class}"}},
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "handlers": {
            "llmrelay": {
                "class": "logging.StreamHandler",
                "formatter": "llmrelay",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["llmrelay"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
