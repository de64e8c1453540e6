"""The front door's end of a relayed request: starting an :class:`.Exchange`, answering
from the hub itself (error pages), and what the relay tells the door (an exchange ended or
failed, a WebSocket tunnel opened or closed). After each, the connection reads its next
request head or closes."""

from __future__ import annotations

from twisted.logger import Logger

from cocalc_hub.proxy import pages
from cocalc_hub.proxy.access import Decision
from cocalc_hub.proxy.backend import BackendConnection, Target
from cocalc_hub.proxy.door import CLOSED, HEAD, IDLE_TIMEOUT, PROXY, TUNNEL, Door
from cocalc_hub.proxy.http1 import RequestHead
from cocalc_hub.proxy.parse import Route
from cocalc_hub.proxy.relay import Exchange, Tunnel

log = Logger(namespace="cocalc_hub.proxy.frontdoor")
"""(The namespace the front door's log lines had before it was split into rooms.)"""


class RelaySide(Door):
    def _start_exchange(self, req: RequestHead, head: bytes, route: Route, backend: Target, started: float,
                        websocket: bool, decision: Decision) -> None:
        exchange = Exchange(self, req, head, backend, route.prefix if route.kind == "server" else None,
                            upgrade=websocket)
        exchange.started = started
        exchange.route, exchange.decision = route, decision  # for an error page's advice
        self.exchange = exchange
        exchange.proxy.exchange_started(self, exchange)
        exchange.start()
        if self.buf and not exchange.finished:
            data, self.buf = self.buf, b""
            rest = exchange.client_data(data)
            if rest:
                self.buf = rest
        if not self.buf or exchange.body.done:
            if self.state == PROXY and not self.buf:
                self.resume_reading()

    def _respond(self, req: RequestHead, status: int, message: str, started: float, *, close: bool = False,
                 extra: list[bytes] | None = None, ctx: pages.Context | None = None) -> None:
        body = pages.error(status, message, ctx=ctx or self.factory.plain, close=close or not req.keep_alive,
                           extra=extra)
        self.client_write(body)
        self._log(req, status, len(body), started, "proxy")
        if close:
            self.close()
        else:
            self._after_response(req)

    def _after_response(self, req: RequestHead) -> None:
        self.exchange = None
        if not req.keep_alive or self.draining or req.length or req.chunked:
            # (an unread request body makes the connection unusable)
            self.close()
            return
        self.state = HEAD
        self._arm(IDLE_TIMEOUT)
        self._process()

    # what the relay tells the door ----------------------------------------------------------

    def respond_error(self, exchange: Exchange, status: int, message: str, *, close: bool) -> None:
        self.exchange = None
        body = pages.error(status, message, ctx=pages.member(self.factory.plain, exchange.route, exchange.decision),
                           close=True)
        self.client_write(body)
        self._log(exchange.req, status, len(body), exchange.started, "proxy")
        self.close()

    def exchange_finished(self, exchange: Exchange) -> None:
        self.exchange = None
        self._log(exchange.req, exchange.status, exchange.sent, exchange.started, "proxy")
        if self.client_close_after or self.state == CLOSED or (self.draining and not self.buf):
            self.close()
            return
        self.state = HEAD
        self._arm(IDLE_TIMEOUT)
        self._process()

    def exchange_aborted(self, exchange: Exchange, why: str) -> None:
        self.exchange = None
        log.info("proxied request aborted: {why}", why=why)
        self._log(exchange.req, exchange.status or 502, exchange.sent, exchange.started, "proxy")
        self.abort()

    def start_tunnel(self, exchange: Exchange, conn: BackendConnection, head: bytes, rest: bytes) -> None:
        assert self.proxy is not None
        self.exchange = None
        self.state = TUNNEL
        self.proxy.tunnels += 1
        self.client_write(head + rest)
        self._log(exchange.req, 101, 0, exchange.started, "proxy-ws")
        self.tunnel = Tunnel(self, conn, exchange, rest)
        rest, self.buf = self.buf, b""
        if rest:
            self.tunnel.client_data(rest)
        self.resume_reading()

    def close_after_tunnel(self, clean: bool) -> None:
        if clean:
            self.close()
        else:
            self.abort()
