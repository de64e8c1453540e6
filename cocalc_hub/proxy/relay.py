"""One proxied HTTP exchange, and WebSocket tunnels: bytes in, bytes out, with back-pressure.

The relay parses only what it must (the response head, where bodies end) and forwards
body bytes as they arrive. While a body streams, each side's transport is registered as
the producer of the other's, so a slow reader pauses the fast writer and nothing piles
up in memory.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from cocalc_hub.proxy.backend import BackendConnection, Refused, Target
from cocalc_hub.proxy.headers import OffSite
from cocalc_hub.proxy.http1 import LAST_CHUNK, BodyFramer, HttpError, RequestHead, ResponseHead, chunk, parse_response
from cocalc_hub.proxy.wsframes import POLICY_VIOLATION, FrameEdges, close_frame

if TYPE_CHECKING:
    from cocalc_hub.proxy.access import Decision
    from cocalc_hub.proxy.door_relay import RelaySide
    from cocalc_hub.proxy.parse import Route

MAX_RESPONSE_HEAD = 64 * 1024


class Exchange:
    """A request forwarded to a backend and its response forwarded back."""

    def __init__(self, front: RelaySide, req: RequestHead, head: bytes, target: Target, prefix: bytes | None,
                 *, upgrade: bool = False) -> None:
        self.front = front
        assert front.proxy is not None
        self.proxy = front.proxy
        self.req = req
        self.head = head
        self.target = target
        self.port = target.port
        self.prefix = prefix  # public prefix for Location rewriting (server routes only)
        self.upgrade = upgrade
        self.started = time.perf_counter()
        self.body = BodyFramer(0 if upgrade else (req.length or 0), False if upgrade else req.chunked)
        self.pending: list[bytes] | None = []
        self.conn: BackendConnection | None = None
        self.resp: ResponseHead | None = None
        self.resp_buf = b""
        self.resp_body: BodyFramer | None = None
        self.wrap_chunked = False
        self.status = 0
        self.sent = 0
        self.finished = False
        self.deadline: float | None = None
        """When the backend has been silent too long (checked by FrontDoorFactory.sweep)."""
        self.retried = False
        self.producing_for_backend = False
        self.route: Route | None = None
        self.decision: Decision | None = None
        """What was authorised (set by the front door; an error page's advice depends on it)."""
        self.own_host = self.proxy.browser_host(req)
        self.secure = self.proxy.browser_secure(req, front.secure)

    # start ---------------------------------------------------------------------------

    def start(self) -> None:
        self.proxy.pool.get(self.target, self._connected, self._connect_failed, fresh=self.upgrade)

    def _connected(self, conn: BackendConnection) -> None:
        if self.finished:
            self.proxy.pool.put(conn)
            return
        self.conn = conn
        conn.handler = self
        reused = conn.reused > 0
        data = self.head + b"".join(self.pending or ())
        self.pending = None
        self._reused_at_send = reused
        conn.write(data)
        self._arm_timer()
        if not self.body.done and conn.transport is not None and self.front.transport is not None:
            # A slow backend pauses reading from the client.
            conn.transport.registerProducer(self.front.transport, True)  # type: ignore[attr-defined]
            self.producing_for_backend = True

    def _connect_failed(self, reason: Failure) -> None:
        if reason.check(Refused) and self.route is not None and self.route.kind == "raw":
            self._fail(502, "The server on the project's port is not the project's own (has the project stopped?); "
                            "the proxy closed the connection without sending anything.")
            return
        if reason.check(Refused):
            self._fail(403, "The server that answered on that port is not this project's; the proxy closed the "
                            "connection without sending anything.")
            return
        self._fail(502, "The project's server did not accept the connection (is it listening?).")

    # client → backend ------------------------------------------------------------------------

    def client_data(self, data: bytes) -> bytes:
        """Request body bytes from the client; returns bytes beyond the body (the next request)."""
        if self.body.done:
            return data
        try:
            n = self.body.feed(data)
        except HttpError as e:
            self._fail(e.status, e.message, close=True)
            return b""
        part = data[:n]
        if part:
            if self.conn is not None:
                self.conn.write(part)
                self._arm_timer()  # a backend reading a long upload is not idle
            elif self.pending is not None:
                self.pending.append(part)
        if self._request_done():
            self._body_sent()
        return data[n:]

    def _request_done(self) -> bool:
        return self.body.done

    def _body_sent(self) -> None:
        if self.producing_for_backend and self.conn is not None and self.conn.transport is not None:
            # The backend may have paused the client while it was the producer: undo that.
            release(self.conn.transport, self.front.transport)
            self.producing_for_backend = False
            self.front.resume_reading(force=True)
        if self.resp_body is not None and self.resp_body.done:
            self._complete()

    # backend → client ------------------------------------------------------------------------------

    def backend_data(self, data: bytes) -> None:
        self._arm_timer()
        body = self.resp_body
        head = b""
        if body is None:
            self.resp_buf += data
            head, data, body = self._read_head()
            if body is None or not data:
                if head:
                    self.front.client_write(head)
                if body is not None and body.done:
                    self._response_done()
                return
        try:
            n = body.feed(data)
        except HttpError:
            self._abort("the backend sent a malformed chunked body")
            return
        if body.decoded is not None:
            payload = b"".join(body.decoded)
            body.decoded.clear()
        else:
            payload = data[:n] if n < len(data) else data
        self._write_body(payload, head)
        if n < len(data) and body.done:
            # Bytes after the response: a confused backend. Do not reuse the connection.
            if self.resp is not None:
                self.resp.keep_alive = False
        if body.done:
            self._response_done()

    def _write_body(self, part: bytes, head: bytes = b"") -> None:
        """Body bytes to the client (with the response head in the same write, if given)."""
        self.sent += len(part)
        if self.wrap_chunked and part:
            part = chunk(part)
        if head or part:
            self.front.client_write(head + part if head else part)

    def _read_head(self) -> tuple[bytes, bytes, BodyFramer | None]:
        """Parse response heads (1xx are forwarded); (head for the client, body bytes already
        received, body framer). The caller writes the head, with the body if it has some."""
        while self.resp_body is None:
            end = self.resp_buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.resp_buf) > MAX_RESPONSE_HEAD:
                    self._fail(502, "The project's server sent a response head that is too large.")
                return b"", b"", None
            head, self.resp_buf = self.resp_buf[:end], self.resp_buf[end + 4:]
            memo = self.conn.memo if self.conn is not None else None
            key = (head, self.req.method, self.req.version, self.req.keep_alive, self.front.draining, self.port,
                   self.prefix, self.own_host, self.secure)
            if memo is not None and memo[0] == key:
                # The same response head as last time on this backend connection (a backend
                # answering the same way, within the second of its Date header).
                _, resp, client_head, self.wrap_chunked, close_after = memo
                self.front.client_close_after = self.front.client_close_after or close_after
                return self._begin_body(ResponseHead.copy(resp), client_head)
            try:
                resp = parse_response(head, request_method=self.req.method)
            except HttpError:
                self._fail(502, "The project's server sent a malformed response.")
                return b"", b"", None
            if resp.status == 101:
                if not self.upgrade:
                    self._fail(502, "The project's server switched protocols unasked.")
                    return b"", b"", None
                self._switch(resp)
                return b"", b"", None
            try:
                if 100 <= resp.status < 200:
                    if resp.status != 100 or self.req.expect_continue:
                        self.front.client_write(self._head_bytes(resp, informational=True))
                    continue
                close_before = self.front.client_close_after
                client_head = self._head_bytes(resp)
            except OffSite:
                self._fail(502, "The project's server tried to redirect you to another site; the hub does not "
                                "pass such redirects on.")
                return b"", b"", None
            if self.conn is not None:
                self.conn.memo = (key, ResponseHead.copy(resp), client_head, self.wrap_chunked,
                                  self.front.client_close_after and not close_before)
            return self._begin_body(resp, client_head)
        return b"", b"", self.resp_body

    def _begin_body(self, resp: ResponseHead, client_head: bytes) -> tuple[bytes, bytes, BodyFramer | None]:
        self.resp = resp
        self.status = resp.status
        decode = resp.chunked and self.req.version != b"HTTP/1.1"
        self.resp_body = BodyFramer(resp.length, resp.chunked, decode=decode)
        if self.front.transport is not None and self.conn is not None and self.conn.transport is not None \
                and not self.resp_body.done:
            # A slow client pauses reading from the backend.
            self.front.transport.registerProducer(self.conn.transport, True)  # type: ignore[attr-defined]
        data, self.resp_buf = self.resp_buf, b""
        return client_head, data, self.resp_body

    def _head_bytes(self, resp: ResponseHead, *, informational: bool = False,
                    keep: frozenset[bytes] = frozenset()) -> bytes:
        proxy = self.proxy
        lines = proxy.response_headers(resp.headers, self.port, self.prefix, keep, self.own_host, self.secure,
                                       resp.status)
        status = b"HTTP/1.1 %d %s" % (resp.status, resp.reason or b"")
        if not informational and resp.status != 101:
            client_11 = self.req.version == b"HTTP/1.1"
            if resp.chunked:
                if client_11:
                    lines.append(b"transfer-encoding: chunked")
                else:
                    self.front.client_close_after = True  # payload decoded, end marked by closing
            elif resp.length is None:
                if client_11 and self.req.method != b"HEAD":
                    lines.append(b"transfer-encoding: chunked")
                    self.wrap_chunked = True
                else:
                    self.front.client_close_after = True
            if not self.req.keep_alive or self.front.draining:
                self.front.client_close_after = True
            if self.front.client_close_after:
                lines.append(b"connection: close")
            elif not client_11:
                lines.append(b"connection: keep-alive")
        return status + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" if lines else status + b"\r\n\r\n"

    def _response_done(self) -> None:
        if self.wrap_chunked:
            self.front.client_write(LAST_CHUNK)
        if self.front.transport is not None:
            # A paused backend connection must not go back to the pool paused.
            release(self.front.transport, self.conn.transport if self.conn is not None else None)
        if self.body.done:
            self._complete()
        elif self.resp is not None and self.resp.status >= 400:
            # The backend answered early (e.g. 413) without reading the whole body.
            self.front.client_close_after = True
            self._complete()

    def backend_lost(self, reason: Failure) -> None:
        if self.finished:
            return
        if self.resp_body is None:
            if self.sent == 0 and not self.retried and getattr(self, "_reused_at_send", False) \
                    and self.body.done and self.req.length in (0, None) and not self.req.chunked:
                # A kept-alive connection the backend had just closed: try once on a fresh one.
                self.retried = True
                self.conn = None
                self.pending = []
                self.proxy.pool.get(self.target, self._connected, self._connect_failed, fresh=True)
                return
            self._fail(502, "The project's server closed the connection without answering.")
            return
        if self.resp_body.at_close():
            self.resp_body.done = True
            if self.resp is not None:
                self.resp.keep_alive = False
            self._response_done()
            if not self.finished:
                self._complete()
            return
        self._abort("the backend closed the connection in the middle of the response")

    # endings ------------------------------------------------------------------------------

    def _complete(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.resp is not None and self.resp.keep_alive and self.body.done and self.resp_body is not None \
                    and self.resp_body.done and not conn.closed:
                self.proxy.pool.put(conn)
            else:
                conn.abort()
        self.front.exchange_finished(self)

    def _fail(self, status: int, message: str, *, close: bool = False) -> None:
        """Answer with an error, if nothing of the response was sent yet; else abort."""
        if self.finished:
            return
        if self.resp is not None:
            self._abort(message)
            return
        self.finished = True
        self._cancel_timer()
        self.status = status
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self.front.respond_error(self, status, message, close=close or not self.body.done)

    def _abort(self, why: str) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self.front.exchange_aborted(self, why)

    def client_lost(self) -> None:
        """The client went away: the backend request is aborted."""
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    # timeout -------------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        timeout = self.proxy.timeout
        if timeout > 0:
            self.deadline = self.proxy.reactor.seconds() + timeout

    def _cancel_timer(self) -> None:
        self.deadline = None

    def _timed_out(self) -> None:
        if self.finished:
            return
        if self.resp is None:
            self._fail(504, "The project's server did not answer in time.")
        else:
            self._abort("the backend stopped sending")

    # upgrades ------------------------------------------------------------------------------

    def _switch(self, resp: ResponseHead) -> None:
        """101 from the backend: relay it and splice the two connections."""
        self.finished = True
        self._cancel_timer()
        self.status = 101
        conn, self.conn = self.conn, None
        assert conn is not None
        keep = frozenset({b"upgrade", b"connection"})
        try:
            head = self._head_bytes(resp, keep=keep)
        except OffSite:
            conn.abort()
            self.front.exchange_aborted(self, "the backend's 101 carried an off-site redirect")
            return
        rest, self.resp_buf = self.resp_buf, b""
        self.front.start_tunnel(self, conn, head, rest)


def release(consumer: Any, producer: Any) -> None:
    """Unregister ``producer`` from ``consumer`` and make sure it is not left paused."""
    if consumer is not None and getattr(consumer, "producer", None) is not None:
        consumer.unregisterProducer()
    if producer is not None and getattr(producer, "connected", False):
        producer.resumeProducing()


class Tunnel:
    """Two connections spliced together after a 101: bytes both ways, back-pressure both ways.

    It keeps what was authorised (``decision``, ``route``) so that the proxy's guard can
    re-check it when access is revoked, and where the backend's frames end, so that
    :meth:`revoke` can tell the browser why (close code 1008) before closing both sides."""

    def __init__(self, front: RelaySide, conn: BackendConnection, exchange: Exchange, sent: bytes = b"") -> None:
        self.front = front
        self.conn = conn
        self.closed = False
        self.decision = exchange.decision
        self.route = exchange.route
        self.frames = FrameEdges()
        self.frames.feed(sent)
        conn.handler = self
        client, backend = front.transport, conn.transport
        if client is not None and backend is not None:
            client.registerProducer(backend, True)  # type: ignore[attr-defined]
            backend.registerProducer(client, True)  # type: ignore[attr-defined]

    def client_data(self, data: bytes) -> None:
        if not self.closed:
            self.conn.write(data)

    def backend_data(self, data: bytes) -> None:
        if not self.closed:
            self.frames.feed(data)
            self.front.client_write(data)

    def revoke(self, reason: str) -> None:
        """Access was taken away: close 1008 to the browser (between two frames; else just
        close the connection), then close the backend side."""
        if self.closed:
            return
        self.closed = True
        transports: tuple[Any, Any] = (self.front.transport, self.conn.transport)
        for transport in transports:
            if transport is not None and getattr(transport, "producer", None) is not None:
                transport.unregisterProducer()  # a paused side must not hold the close back
        if self.frames.at_boundary:
            self.front.client_write(close_frame(POLICY_VIOLATION, reason))
            self.front.close_after_tunnel(clean=True)
        else:
            self.front.close_after_tunnel(clean=False)
        if self.conn.transport is not None:
            self.conn.transport.abortConnection()  # type: ignore[attr-defined]

    def backend_lost(self, reason: Failure) -> None:
        if not self.closed:
            self.closed = True
            self.front.close_after_tunnel(clean=reason.check(ConnectionDone) is not None)

    def client_lost(self) -> None:
        if not self.closed:
            self.closed = True
            if self.conn.transport is not None:
                self.conn.transport.loseConnection()
