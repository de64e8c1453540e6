"""Conat sockets: ordered, acknowledged client/server conversations over pub/sub."""

from cocalc_hub.conat.socket.base import ConatSocket
from cocalc_hub.conat.socket.client import SocketClient
from cocalc_hub.conat.socket.server import ServerSocket, SocketServer

__all__ = ["ConatSocket", "ServerSocket", "SocketClient", "SocketServer"]
