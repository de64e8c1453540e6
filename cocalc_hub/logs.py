"""Log observers: readable text or JSON lines, with secrets scrubbed.

Code should not log secrets in the first place; the scrubber is the second
line of defence for the shapes a secret can have here (remember_me cookie
values, ``sk-`` API keys, ``sha512$`` hashes, Authorization/Cookie values).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import logfile
from zope.interface import implementer

_SECRET_PATTERNS = [
    # remember_me cookie values and password-hash style strings: algo$salt$iterations$secret
    (re.compile(r"\b(sha\d+|argon2\w*)\$[^\s$;,\"']+\$[^\s$;,\"']+\$[^\s;,\"']+"), r"\1$<redacted>"),
    # API keys (current and legacy formats)
    (re.compile(r"\bsk[-_][A-Za-z0-9]{6,}"), "sk-<redacted>"),
    # header-shaped secrets
    (re.compile(r"(?i)\b(authorization|cookie|set-cookie|x-cocalc-secret|x-project-secret)(\s*[:=]\s*)[^\r\n]*"),
     r"\1\2<redacted>"),
    # key=value pairs with secret-looking names (query strings, form bodies, env dumps)
    (re.compile(r"(?i)\b([\w-]*(?:password|passwd|secret|token|api_key|apikey|remember_me|hub_password)[\w-]*)=([^&\s;,\"']+)"),
     r"\1=<redacted>"),
]

SENSITIVE_KEYS = re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key|remember_me|cookie|authorization)")


_MARKERS = ("$", "sk", "=", ":")


def redact(text: str) -> str:
    """Scrub anything shaped like a secret out of a string."""
    if not any(m in text for m in _MARKERS):
        return text  # nothing secret-shaped can be in it (the common access-log case)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if SENSITIVE_KEYS.search(key) and not key.startswith("log_"):
            return "<redacted>"
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if value is None or isinstance(value, (bool, int, float, list, tuple, dict)):
        return value
    # Objects that render themselves lazily (e.g. twisted's legacy-format wrappers).
    return redact(str(value))


def redact_event(event: LogEvent) -> LogEvent:
    """A copy of the event whose string fields have been scrubbed, except the fields the
    emitter names in ``log_unredacted``: secrets meant for the operator's eyes (the one-time
    first-admin setup link)."""
    clean: dict[str, Any] = {}
    keep = event.get("log_unredacted", ())
    for key, value in event.items():
        if key in ("log_logger", "log_source", "log_level", "log_namespace", "log_time", "log_failure",
                   "log_trace", "log_observer", "log_unredacted") or key in keep:
            clean[key] = value
        else:
            clean[key] = _redact_value(key, value)
    return clean


@implementer(ILogObserver)
class RedactingObserver:
    """Passes events to another observer after scrubbing secrets."""

    def __init__(self, wrapped: ILogObserver) -> None:
        self._wrapped = wrapped

    def __call__(self, event: LogEvent) -> None:
        self._wrapped(redact_event(event))


def log_stream(twistd_options: Mapping[str, Any] | None) -> IO[Any]:
    """Where twistd would write its log: stdout in the foreground, else the log file."""
    if twistd_options is None:
        return sys.stdout
    name = twistd_options.get("logfile")
    nodaemon = bool(twistd_options.get("nodaemon"))
    if name == "-" or (nodaemon and not name):
        return sys.stdout
    stream = logfile.LogFile.fromFullPath(name or "twistd.log", defaultMode=0o600)
    os.chmod(stream.path, 0o600)  # the hub's logs are its user's alone (also a file from before)
    return cast(IO[Any], stream)


_LEGACY_KEYS = frozenset({"message", "time", "system", "format", "isError", "why", "failure"})


def json_line(event: LogEvent) -> str:
    """One JSON object per event: time, level, namespace, the formatted text, then the fields."""
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(timespec="milliseconds"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:
            out["traceback"] = repr(failure)
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in out:
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            out[key] = value
        else:
            out[key] = str(value)
    return json.dumps(out, ensure_ascii=False, default=str) + "\n"


def make_observer(fmt: str, stream: IO[Any], level: LogLevel = LogLevel.info) -> ILogObserver:
    """The hub's log observer: text or JSON lines, level-filtered, scrubbed."""
    inner: ILogObserver
    if fmt == "json":
        inner = FileLogObserver(stream, json_line)
    else:
        inner = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    return FilteringLogObserver(RedactingObserver(inner), [predicate])
