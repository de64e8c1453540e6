"""The front door's room for the hub's own requests: each is fed, one at a time, to an
ordinary Twisted ``HTTPChannel`` (the hub's Site) through :class:`.Shim`, a transport that
keeps the connection in the front door's hands between requests. A WebSocket upgrade
handled by the Site (conat) leaves the connection to that protocol for good."""

from __future__ import annotations

from twisted.internet import protocol

from cocalc_hub.proxy.door import CLOSED, HEAD, HUB, IDLE_TIMEOUT, RAW, Door
from cocalc_hub.proxy.http1 import BodyFramer, HttpError, RequestHead
from cocalc_hub.proxy.shim import Shim


class SiteSide(Door):
    def _hub(self, req: RequestHead, head: bytes) -> None:
        if self.channel is None:
            self.channel = self.site.buildProtocol(self.addr)
            self.channel.embedded_in = self
            self.shim = Shim(self)
            self.shim.protocol = self.channel
            self.channel.makeConnection(self.shim)
            self.channel.setTimeout(None)  # the front door times connections out
        assert self.shim is not None
        self.state = HUB
        self.shim.attach()
        self.hub_body = BodyFramer(req.length or 0, req.chunked)
        self.channel.dataReceived(head + b"\r\n\r\n")
        if self._upgraded():
            return
        if self.state == HUB:
            data, self.buf = self.buf, b""
            self._hub_input(data)

    def _hub_input(self, data: bytes) -> None:
        body = self.hub_body
        if body is None or body.done:
            self.buf += data
            self.pause_reading()
            return
        try:
            n = body.feed(data)
        except HttpError as e:
            self._refuse(e.status, e.message)
            return
        if n:
            self.channel.dataReceived(data[:n])
            if self._upgraded():
                return
        if n < len(data):
            self.buf += data[n:]
            self.pause_reading()

    def _upgraded(self) -> bool:
        """Did the Site hand the connection to another protocol (a WebSocket)?"""
        if self.shim is not None and self.shim.protocol is not self.channel and self.state != CLOSED:
            self.state = RAW
            self._disarm()
            # The Site's channel and its last request (the upgrade, never finished) are done
            # with: told now that their connection is gone, and let go (several KB per idle
            # WebSocket otherwise).
            channel, self.channel, self.hub_body = self.channel, None, None
            channel.connectionLost(protocol.connectionDone)
            # No deadline or exchange from now on: the sweeper need not visit it (with
            # 10 000 idle WebSockets it walked them all four times a second).
            self.factory.connections.discard(self)
            rest, self.buf = self.buf, b""
            if rest:
                self.shim.protocol.dataReceived(rest)
            self.resume_reading()
            return True
        return False

    def hub_request_done(self) -> None:
        """The Site finished a response (called by the embedded channel)."""
        if self.state != HUB:
            return
        assert self.shim is not None
        self.shim.detach()
        self.hub_body = None
        self.state = HEAD
        self._arm(IDLE_TIMEOUT)
        if self.draining and not self.buf:
            self.close()  # shutting down: an idle connection is not kept (the site waits for it)
            return
        if not self._in_process:
            self._process()
            if self.state == HEAD:
                self.resume_reading()
