"""The hub's HTTP client for project programs (exec, ping), with pooled connections."""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from twisted.application import service
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from cocalc_hub.reactors import IReactorTimeTCP

TOKEN_HEADER = "X-CoCalc-Project-Token"


class ProjectUnreachable(Exception):
    pass


class ProjectClientService(service.Service):
    """Closes the client's pooled connections when the hub stops."""

    name = "project-client"

    def __init__(self, client: ProjectClient) -> None:
        self.client = client

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return self.client.close()


class ProjectClient:
    def __init__(self, reactor: IReactorTimeTCP, base_path: str) -> None:
        self.reactor = reactor
        self.prefix = "" if base_path == "/" else base_path
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 8
        self.http = HTTPClient(Agent(reactor, pool=self.pool, connectTimeout=5))

    async def call(self, project_id: str, port: int, token: str, api: str, body: dict[str, Any],
                   timeout: float) -> tuple[int, Any]:
        """POST JSON to ``/<project_id>/.api/<api>`` on the project's server; (status, decoded JSON)."""
        url = f"http://127.0.0.1:{port}{self.prefix}/{project_id}/.api/{api}"
        headers = Headers({"Content-Type": ["application/json"], TOKEN_HEADER: [token]})
        d = self.http.post(url, data=json.dumps(body).encode(), headers=headers)
        d.addTimeout(timeout, self.reactor)
        try:
            response = await d
            content = await response.content()
        except defer.TimeoutError:
            raise ProjectUnreachable(f"the project did not answer within {timeout:g} seconds") from None
        except Exception as e:
            raise ProjectUnreachable(f"cannot reach the project: {e}") from None
        try:
            return response.code, json.loads(content)
        except ValueError:
            raise ProjectUnreachable("the project sent an invalid answer") from None

    def close(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = self.pool.closeCachedConnections()
        return d
