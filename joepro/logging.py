"""Log lines without secrets in them, plain or JSON, with the request, user and sandbox ids.

Secrets are never logged on purpose; redaction is the safety net for what gets through anyway
(a URL in a library's debug line, an exception message, an extra field). It applies to the
**finished line**, after arguments, exceptions, tracebacks and extra fields were formatted
into it, so nothing reaches the output around it. It blanks:

- the configured secrets, verbatim: the Daytona API key, Django's ``SECRET_KEY``, the webhook
  secret, the metrics token, the e-mail password, OAuth client secrets, and the passwords in
  the database, Redis and broker URLs;
- the secrets minted at runtime (SSH tokens, signed links) that the access service hands to
  :func:`remember_secret`;
- what secrets look like wherever they appear: ``Bearer <x>``, ``Authorization``, preview-token
  and cookie headers, secret query parameters (``token``, ``code``, ``signature``, ``key``,
  ``*auth_key``...), ``ssh [options] <token>@host``, passwords in URLs, tokens in signed
  preview hostnames and paths, Daytona keys (``dtn_``) and webhook secrets (``whsec_``).
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from . import request_context

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6  # shorter values would blank ordinary words
REMEMBERED_SECRETS = 4096  # runtime secrets kept per process (the newest)

_VALUE = r"[^\s\"'\\&;<>]+"  # stops at quotes and backslashes, so JSON lines stay valid
_QUOTE = r"\\?[\"']?"  # a key's or value's quote, escaped inside a JSON string
_SECRET_NAMES = (
    r"(?:x-)?daytona-preview-token|x-daytona-sandbox-auth-key|[a-z_-]*auth[_-]key|x-api-key|api[_-]?key"
    r"|(?:access|refresh|id|ssh|preview|metrics)[_-]?token|token|client[_-]?secret|secret(?:[_-]?key)?"
    r"|password|passwd|signature|(?:webhook|svix)-signature|sessionid|csrftoken|set-cookie|cookie"
)
# (pattern, replacement), applied in order.
_PATTERNS = [
    (re.compile(r"(?i)(\bbearer\s+)[^\s\"'\\,;]+"), rf"\1{REDACTED}"),
    (
        re.compile(
            rf"(?i)(\b(?:proxy-)?authorization{_QUOTE}\s*[:=]\s*{_QUOTE})(?:(?:basic|bearer|token|digest)\s+)?[^\s\"'\\,;]+"
        ),
        rf"\1{REDACTED}",
    ),
    (
        re.compile(
            rf"(?i)([?&](?:code|sig|key|[a-z0-9_-]*(?:token|secret|password|signature)|{_SECRET_NAMES})=)[^&\s\"'\\#<>]*"
        ),
        rf"\1{REDACTED}",
    ),
    (re.compile(rf"(?i)(\b(?:{_SECRET_NAMES}){_QUOTE}\s*[:=]\s*{_QUOTE})(?!\[redacted\]){_VALUE}"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s/@:\"'\\]*:)[^\s/@\"'\\]+@"), rf"\1{REDACTED}@"),
    (re.compile(r"(\bssh\s(?:[^@\s\"'\\]+\s+){0,8}?)[A-Za-z0-9_.~+-]+@"), rf"\1{REDACTED}@"),
    (re.compile(r"(?i)(\bssh://)[^@/\s\"'\\]+@"), rf"\1{REDACTED}@"),
    (re.compile(r"(\bUser[ \t]+)[A-Za-z0-9_-]{16,}"), rf"\1{REDACTED}"),
    # Signed preview links: https://<port>-<token>.<proxy domain> (the standard link has the
    # sandbox's UUID there), the fake's /preview/<token>/, and the API's expire path.
    (re.compile(r"(?i)(\bhttps?://\d{1,5}-)[a-z0-9]{8,40}(?=\.)"), rf"\1{REDACTED}"),
    (re.compile(r"(/preview/)[A-Za-z0-9]{8,}"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(signed-preview-url/)[^/\s\"'\\?]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(daytona-sandbox-auth-)[A-Za-z0-9]+"), rf"\1{REDACTED}"),
    (re.compile(r"\bdtn_[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{8,}"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_.-]{4,}"), REDACTED),  # signed JSON (JWTs, handshake codes)
]

_remembered: OrderedDict[str, None] = OrderedDict()
_remembered_lock = threading.Lock()
_remembered_version = 0


def remember_secret(value: str | None) -> None:
    """Keep ``value`` out of every later log line of this process. For secrets minted at
    runtime; the newest ``REMEMBERED_SECRETS`` are kept."""
    global _remembered_version
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _remembered_lock:
        if value in _remembered:
            _remembered.move_to_end(value)
            return
        _remembered[value] = None
        while len(_remembered) > REMEMBERED_SECRETS:
            _remembered.popitem(last=False)
        _remembered_version += 1


def configured_secrets() -> tuple[str, ...]:
    """The secrets in the settings, verbatim."""
    try:
        values = [getattr(settings, name, "") for name in _SECRET_SETTINGS]
        urls = [getattr(settings, name, "") for name in _URL_SETTINGS]
        values += [db.get("PASSWORD", "") for db in getattr(settings, "DATABASES", {}).values()]
        for provider in (getattr(settings, "SOCIALACCOUNT_PROVIDERS", {}) or {}).values():
            values += [app.get("secret", "") for app in provider.get("APPS", ())]
    except ImproperlyConfigured:  # no settings in this process
        return ()
    values += [_password(url) for url in urls if isinstance(url, str)]
    return tuple(value for value in values if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH)


_SECRET_SETTINGS = (
    "DAYTONA_API_KEY",
    "SECRET_KEY",
    "DAYTONA_WEBHOOK_SECRET",
    "METRICS_TOKEN",
    "EMAIL_HOST_PASSWORD",
)
_URL_SETTINGS = ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")


def _password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


@lru_cache(maxsize=16)
def _literal_pattern(configured: tuple[str, ...], version: int) -> re.Pattern | None:
    """One pattern for every secret as it may appear: raw, escaped inside a JSON string, or
    percent-encoded in a URL; and a webhook secret's key without its ``whsec_`` prefix.
    ``version`` names the state of the remembered secrets."""
    with _remembered_lock:
        secrets = configured + tuple(_remembered)
    forms = set()
    for secret in secrets:
        for form in (secret, secret.removeprefix("whsec_")):
            if len(form) >= MIN_SECRET_LENGTH:
                forms.update((form, json.dumps(form)[1:-1], quote(form, safe="")))
    if not forms:
        return None
    return re.compile("|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True)))


def redact(text: str) -> str:
    """``text`` with every secret it contains replaced by ``[redacted]``."""
    literal = _literal_pattern(configured_secrets(), _remembered_version)
    if literal is not None:
        text = literal.sub(REDACTED, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def configure(config: dict) -> None:
    """``LOGGING_CONFIG``: apply ``LOGGING``, and send Python's warnings through it (logger
    ``py.warnings``) instead of straight to stderr, so that every line has the one format."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)


class RedactedOutput:
    """Mixin for a ``logging.Formatter``: the formatted line, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class PlainFormatter(RedactedOutput, logging.Formatter):
    """``LOG_FORMAT=plain``: ``<time> <level> <logger> <message>``, tracebacks below."""


class JsonFormatter(RedactedOutput, _JsonFormatter):
    """``LOG_FORMAT=json``: one object per line with ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message``, ``request_id``, ``user_id``, ``sandbox_id``, ``exc_info`` (the
    traceback, as a string) when there is one, and the record's extra fields."""

    FIELDS = ("levelname", "name", "message", "request_id", "user_id", "sandbox_id")

    def __init__(self, **kwargs):
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, "color_message", "request"])
        super().__init__(list(self.FIELDS), **kwargs)

    def add_fields(self, log_data, record, message_dict) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)


class ContextFilter(logging.Filter):
    """Puts the request id, user id and sandbox id in effect (:mod:`joepro.request_context`)
    on every record, unless the record brings its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in request_context.current().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class RedactSecrets(logging.Filter):
    """Blanks secrets in a record's message and arguments, for loggers whose lines another
    formatter writes (uvicorn's access log when uvicorn keeps its own logging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True
