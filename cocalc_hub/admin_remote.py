"""How ``cocalc-hub-admin`` reaches a running hub: ``http[s]://host:port[/base]`` or a unix
socket (``unix:/run/cocalc-hub.sock`` with the base path from ``BASE_PATH``, or
``http+unix://%2Frun%2Fcocalc-hub.sock[/base]``), authenticated with the hub's own secret."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from treq.client import HTTPClient
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorUNIX, IStreamClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer


class HubUnreachable(Exception):
    pass


@dataclass(frozen=True)
class HubAddress:
    url: str
    """Where requests go: ``http://localhost/base`` for a socket."""
    socket: str | None = None
    """The unix socket's path, if any."""

    def describe(self) -> str:
        return f"unix:{self.socket}" if self.socket else self.url


def default_hub(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    port = env.get("PORT", "5000")
    base = env.get("BASE_PATH", "/")
    if port.startswith("unix:"):
        return port
    return f"http://127.0.0.1:{port}{'' if base == '/' else base}"


def parse_hub(value: str, env: Mapping[str, str] | None = None) -> HubAddress:
    """A --hub value (see the module docstring); ValueError with a readable message if wrong."""
    env = os.environ if env is None else env
    if value.startswith("unix:"):
        path = value[len("unix:"):].split(":")[0]  # tolerate endpoint options (unix:/p:mode=660)
        base = env.get("BASE_PATH", "/")
        if not path:
            raise ValueError(f"{value!r}: give the socket's path, e.g. unix:/run/cocalc-hub.sock")
        return HubAddress(f"http://localhost{'' if base == '/' else base}", socket=path)
    parts = urlsplit(value)
    if parts.scheme == "http+unix":
        path = unquote(parts.netloc)
        if not path:
            raise ValueError(f"{value!r}: the socket path goes in the host part, %-encoded")
        return HubAddress(f"http://localhost{parts.path.rstrip('/')}", socket=path)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not http[s]://host:port[/base], unix:/path or http+unix://%2Fpath")
    return HubAddress(value.rstrip("/"))


@implementer(IAgentEndpointFactory)
class _SocketEndpoints:
    def __init__(self, reactor: IReactorUNIX, path: str) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return UNIXClientEndpoint(self.reactor, self.path, timeout=5)


async def hub_request(hub: HubAddress, endpoint: str, params: dict[str, Any], token: str,
                      timeout: float = 60.0) -> tuple[int, Any]:
    """POST to a hub's JSON API; HubUnreachable if nothing answers there."""
    from cocalc_hub.reactors import global_reactor

    reactor = global_reactor()

    pool = HTTPConnectionPool(reactor, persistent=False)
    if hub.socket is not None:
        agent = Agent.usingEndpointFactory(reactor, _SocketEndpoints(reactor, hub.socket), pool=pool)
    else:
        agent = Agent(reactor, pool=pool, connectTimeout=5)
    headers = Headers({"Content-Type": ["application/json"], "Authorization": [f"Bearer {token}"]})
    d = HTTPClient(agent).post(f"{hub.url}/api/v2/{endpoint}", data=json.dumps(params).encode(), headers=headers)
    d.addTimeout(timeout, reactor)
    try:
        response = await d
        content = await response.content()
    except Exception as e:
        raise HubUnreachable(f"cannot reach the hub at {hub.describe()}: {e}") from None
    try:
        return response.code, json.loads(content)
    except ValueError:
        return response.code, {"error": content[:200].decode("utf-8", "replace")}
