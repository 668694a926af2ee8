"""Structured logs (structlog) that can never carry a secret.

Contract: once a secret is registered with ``register_secret`` (the API key is,
as soon as it is read), no line written through this configuration contains it
— not in a message, a bound value, a library's own log record (``websockets``
logs its request line at debug level, query string included) nor a rendered
traceback. ``redact`` is the same filter for any other text that leaves the
process (error messages, the uncaught-exception hook).

Besides the registered values, anything shaped like a credential is masked:
``api_key=…`` in a URL and an ``X-API-KEY`` header, whatever its value.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import structlog
from structlog.typing import EventDict, WrappedLogger

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_CREDENTIAL_SHAPES = (
    re.compile(r"(?i)(api[_-]?key=)[^&\s\"'<>]+"),
    re.compile(r"(?i)(x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
)
# Shorter values would mask common words; an API key is far longer.
_MIN_SECRET_LENGTH = 6


def register_secret(value: str | None) -> None:
    """Never let ``value`` (nor its URL-encoded forms) appear in any output."""
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    with _lock:
        _secrets.update({value, quote(value, safe=""), quote_plus(value)})


def registered_secrets() -> frozenset[str]:
    return frozenset(_secrets)


def redact(text: str) -> str:
    """``text`` with every registered secret and credential-shaped value masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    for shape in _CREDENTIAL_SHAPES:
        text = shape.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact_bytes(raw: bytes) -> tuple[bytes, bool]:
    """``raw`` with registered secrets masked, and whether anything was masked."""
    masked = False
    for secret in sorted(_secrets, key=len, reverse=True):
        needle = secret.encode()
        if needle in raw:
            raw = raw.replace(needle, MASK.encode())
            masked = True
    return raw, masked


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {redact(str(k)): _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact_value(v) for v in value]
    # Anything else is rendered with str() by the renderer: redact that text now.
    return redact(str(value))


def redact_processor(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """structlog processor: mask secrets in every key and value (after tracebacks are rendered)."""
    return {redact(str(k)): _redact_value(v) for k, v in event.items()}


def _renderer(fmt: str) -> structlog.typing.Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer(sort_keys=False)
    # Plain tracebacks: a "pretty" exception formatter may print local variables.
    return structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback
    )


def configure_logging(
    level: str = "info", fmt: str = "console", stream: TextIO | None = None
) -> None:
    """Route structlog and the standard library's logging through one redacting pipeline.

    ``fmt`` is ``console`` (key=value lines) or ``json`` (one object per line).
    Everything goes to ``stream`` (default stderr).
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_processor,
            _renderer(fmt),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # Libraries stay quieter than the ledger unless debugging is asked for.
    for noisy in ("websockets", "httpx", "httpcore", "asyncio", "eventsourcing"):
        logging.getLogger(noisy).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    install_excepthook()


def _redacting_excepthook(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    import traceback

    text = "".join(traceback.format_exception(kind, exc, tb))
    sys.stderr.write(redact(text))


def install_excepthook() -> None:
    """Uncaught exceptions (main thread and others) print a redacted traceback."""
    sys.excepthook = _redacting_excepthook

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        _redacting_excepthook(args.exc_type, args.exc_value or Exception(), args.exc_traceback)

    threading.excepthook = thread_hook


def get_logger(name: str) -> Any:
    """A structlog logger; ``Any`` because structlog's bound loggers are dynamically typed."""
    return structlog.get_logger(name)
