"""Just enough HTTP/1.1 for a proxy: parse heads strictly, find where bodies end.

Strictness is the point: ambiguous framing (Content-Length and Transfer-Encoding
together, two different lengths, whitespace before a colon, folded lines) is how
request smuggling works, so such requests are refused rather than guessed at.
"""

from __future__ import annotations

import re

MAX_HEAD = 64 * 1024
MAX_HEADERS = 128
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")


class HttpError(Exception):
    """A request the proxy must refuse; ``status`` is what to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Headers = list[tuple[bytes, bytes]]
"""(lower-cased name, value) in order; names as sent are not kept."""


class RequestHead:
    __slots__ = ("method", "target", "version", "headers", "path", "query", "length", "chunked", "keep_alive",
                 "upgrade", "expect_continue")

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: Headers) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        path, sep, query = target.partition(b"?")
        self.path = path
        self.query = sep + query
        self.length: int | None = None
        self.chunked = False
        self.keep_alive = version == b"HTTP/1.1"
        self.upgrade: bytes | None = None
        self.expect_continue = False

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


class ResponseHead:
    __slots__ = ("version", "status", "reason", "headers", "length", "chunked", "keep_alive")

    def __init__(self, version: bytes, status: int, reason: bytes, headers: Headers) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length: int | None = None
        self.chunked = False
        self.keep_alive = version == b"HTTP/1.1"

    def copy(self) -> ResponseHead:
        other = ResponseHead(self.version, self.status, self.reason, self.headers)
        other.length, other.chunked, other.keep_alive = self.length, self.chunked, self.keep_alive
        return other


# One header field: a token, a colon, a value without NUL/CR/LF (OWS trimmed), CRLF.
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00\r\n]*?)[ \t]*\r\n")
_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00\r\n]*\r\n)*")


def _headers(block: bytes, errors: int) -> Headers:
    """Header fields of a block of ``Name: value\r\n`` lines, checked in one pass in C.

    Anything else (obs-fold, "Name : value", bare LF, NUL) fails the whole-block match.
    """
    if not _BLOCK.fullmatch(block):
        raise HttpError(errors, "malformed header field")
    fields = _FIELD.findall(block)
    if len(fields) > MAX_HEADERS:
        raise HttpError(431, "too many header fields")
    return [(name.lower(), value) for name, value in fields]


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def _framing(headers: Headers, status: int) -> tuple[int | None, bool]:
    """(content length, chunked) with smuggling-safe rules; ``status`` is the error to raise."""
    lengths = [v for k, v in headers if k == b"content-length"]
    encodings = [v for k, v in headers if k == b"transfer-encoding"]
    if encodings:
        if lengths:
            raise HttpError(status, "both Content-Length and Transfer-Encoding")
        codings = [c.strip().lower() for v in encodings for c in v.split(b",") if c.strip()]
        if codings != [b"chunked"]:
            raise HttpError(501 if status == 400 else status, "only Transfer-Encoding: chunked is supported")
        return None, True
    if lengths:
        values = {v.strip() for v in b",".join(lengths).split(b",")}
        if len(values) != 1:
            raise HttpError(status, "conflicting Content-Length")
        value = values.pop()
        if not value.isdigit() or len(value) > 18:
            raise HttpError(status, "invalid Content-Length")
        return int(value), False
    return None, False


def parse_request(head: bytes) -> RequestHead:
    """Parse a request head (without the final blank line)."""
    line, _, block = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(505, "HTTP version not supported")
    if _BAD_VALUE.search(target) or b"\t" in target:
        raise HttpError(400, "malformed request target")
    headers = _headers(block + b"\r\n" if block else b"", 400)
    req = RequestHead(method, target, version, headers)
    req.length, req.chunked = _framing(headers, 400)
    tokens = _connection_tokens(headers)
    if b"close" in tokens:
        req.keep_alive = False
    elif b"keep-alive" in tokens and version == b"HTTP/1.0":
        req.keep_alive = True
    if b"upgrade" in tokens:
        upgrade = req.get(b"upgrade")
        if upgrade:
            req.upgrade = upgrade.strip().lower()
    expect = req.get(b"expect")
    req.expect_continue = expect is not None and expect.strip().lower() == b"100-continue"
    return req


def parse_response(head: bytes, *, request_method: bytes) -> ResponseHead:
    line, _, block = head.partition(b"\r\n")
    m = _STATUS.fullmatch(line)
    if m is None:
        raise HttpError(502, "the backend sent a malformed status line")
    version = b"HTTP/1." + m.group(1)
    status = int(m.group(2))
    headers = _headers(block + b"\r\n" if block else b"", 502)
    resp = ResponseHead(version, status, m.group(3) or b"", headers)
    tokens = _connection_tokens(headers)
    if b"close" in tokens:
        resp.keep_alive = False
    elif b"keep-alive" in tokens and version == b"HTTP/1.0":
        resp.keep_alive = True
    if request_method == b"HEAD" or 100 <= status < 200 or status in (204, 304):
        resp.length = 0
        return resp
    resp.length, resp.chunked = _framing(headers, 502)
    if resp.length is None and not resp.chunked:
        resp.keep_alive = False  # the body ends when the backend closes
    return resp


class BodyFramer:
    """Finds where a message body ends in a byte stream, without copying it.

    ``feed(data)`` returns how many bytes of ``data`` belong to the body (the rest is the
    next message); ``done`` tells whether the body is complete. For chunked bodies the
    chunk syntax is validated, so the bytes can be forwarded as they are.
    """

    __slots__ = ("remaining", "chunked", "done", "decoded", "_state", "_line", "_chunk_left")

    # chunked states
    SIZE, DATA, DATA_CRLF, TRAILER = range(4)
    MAX_LINE = 4096

    def __init__(self, length: int | None, chunked: bool, *, decode: bool = False) -> None:
        self.chunked = chunked
        self.decoded: list[bytes] | None = [] if decode else None
        """With ``decode``: the chunk payloads seen so far (for HTTP/1.0 clients)."""
        self.remaining = length  # None with not chunked: until close
        self.done = length == 0 and not chunked
        self._state = self.SIZE
        self._line = b""
        self._chunk_left = 0

    def feed(self, data: bytes) -> int:
        if self.done:
            return 0
        if not self.chunked:
            if self.remaining is None:
                return len(data)
            take = min(self.remaining, len(data))
            self.remaining -= take
            if self.remaining == 0:
                self.done = True
            return take
        return self._feed_chunked(data)

    def _feed_chunked(self, data: bytes) -> int:
        i, n = 0, len(data)
        while i < n and not self.done:
            state = self._state
            if state == self.DATA:
                take = min(self._chunk_left, n - i)
                if self.decoded is not None:
                    self.decoded.append(data[i:i + take])
                i += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._state = self.DATA_CRLF
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self._line += data[i:]
                if len(self._line) > self.MAX_LINE:
                    raise HttpError(400, "chunk line too long")
                return n
            line = self._line + data[i:j + 1]
            self._line = b""
            i = j + 1
            if not line.endswith(b"\r\n"):
                raise HttpError(400, "chunk lines must end with CRLF")
            line = line[:-2]
            if state == self.SIZE:
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size):
                    raise HttpError(400, "invalid chunk size")
                self._chunk_left = int(size, 16)
                self._state = self.DATA if self._chunk_left else self.TRAILER
            elif state == self.DATA_CRLF:
                if line:
                    raise HttpError(400, "chunk data longer than its size")
                self._state = self.SIZE
            else:  # TRAILER: header lines until an empty one
                if not line:
                    self.done = True
        return i

    def at_close(self) -> bool:
        """True if the body is complete when the stream ends here (close-delimited)."""
        return self.done or (not self.chunked and self.remaining is None)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
