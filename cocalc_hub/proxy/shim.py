"""The transport the front door gives the hub's embedded HTTPChannel (and a protocol the
channel upgrades to, such as a conat WebSocket): writes go to the real connection, the
channel's producer is attached to it only while the Site handles a request."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IConsumer, IPushProducer, ISSLTransport, ITCPTransport, ITransport
from zope.interface import directlyProvides, implementer

if TYPE_CHECKING:
    from cocalc_hub.proxy.door import Door


@implementer(ITransport, IPushProducer, IConsumer)
class Shim:
    """The transport the embedded HTTPChannel (and a protocol it upgrades to) writes to."""

    def __init__(self, front: Door) -> None:
        self.front = front
        self.protocol: Any = None
        self.producer: Any = None
        self.streaming = False
        self.attached = False
        self.disconnecting = False
        self.connected = 1
        real = front.transport
        if ISSLTransport.providedBy(real):
            directlyProvides(self, ITransport, IPushProducer, IConsumer, ISSLTransport)

    @property
    def transport(self) -> Any:
        """The connection underneath (what a protocol's writes go to)."""
        return self.front.transport

    # ITransport
    def write(self, data: bytes) -> None:
        if self.front.transport is not None:
            self.front.transport.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.front.close()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.front.abort()

    def getPeer(self) -> Any:
        return self.front.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> Any:
        return self.front.transport.getHost()  # type: ignore[union-attr]

    def getPeerCertificate(self) -> Any:
        return self.front.transport.getPeerCertificate()  # type: ignore[union-attr]

    def setTcpNoDelay(self, enabled: bool) -> None:
        if ITCPTransport.providedBy(self.front.transport):
            self.front.transport.setTcpNoDelay(enabled)

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        if ITCPTransport.providedBy(self.front.transport):
            self.front.transport.setTcpKeepAlive(enabled)

    # IConsumer: the channel registers itself; it is attached to the real transport only
    # while the Site handles a request, so the proxy can register its own producers.
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer, self.streaming = producer, streaming
        if self.attached and self.front.transport is not None:
            self.front.transport.registerProducer(producer, streaming)  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        if self.attached and self.front.transport is not None and self.producer is not None:
            self.front.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.producer = None

    def attach(self) -> None:
        if not self.attached:
            self.attached = True
            if self.producer is not None and self.front.transport is not None:
                self.front.transport.registerProducer(self.producer, self.streaming)  # type: ignore[attr-defined]

    def detach(self) -> None:
        if self.attached:
            if self.producer is not None and self.front.transport is not None:
                self.front.transport.unregisterProducer()  # type: ignore[attr-defined]
                # If the transport had paused the channel, it will not resume it any more.
                self.producer.resumeProducing()
            self.attached = False

    # IPushProducer: the channel asks for its input to pause.
    def pauseProducing(self) -> None:
        self.front.pause_reading()

    def resumeProducing(self) -> None:
        self.front.resume_reading()

    def stopProducing(self) -> None:
        self.front.abort()
