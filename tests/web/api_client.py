"""A small JSON API client for tests: keeps cookies like a browser and echoes the CSRF token."""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers


class Response:
    def __init__(self, code: int, headers: Headers, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def set_cookies(self) -> list[str]:
        return [v.decode("latin-1") for v in self.headers.getRawHeaders(b"set-cookie", [])]

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.body[:200]!r}>"


class ApiClient:
    """Talks to one hub; ``cookies`` behaves like a browser cookie jar for one site."""

    def __init__(self, base: str, pool: HTTPConnectionPool) -> None:
        self.base = base
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.cookies: dict[str, str] = {}
        self.headers: dict[str, str] = {}

    def _absorb(self, headers: Headers) -> None:
        for raw in headers.getRawHeaders(b"set-cookie", []):
            pair = raw.decode("latin-1").split(";", 1)[0]
            name, _, value = pair.partition("=")
            if "Max-Age=0" in raw.decode("latin-1") or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    def csrf_token(self) -> str | None:
        for name, value in self.cookies.items():
            if name.endswith("csrf_token"):
                return value
        return None

    async def request(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
                      headers: dict[str, str] | None = None, csrf: bool = True, cookies: bool = True) -> Response:
        h: dict[str, list[str]] = {k: [v] for k, v in self.headers.items()}
        if cookies and self.cookies:
            h["Cookie"] = ["; ".join(f"{k}={v}" for k, v in self.cookies.items())]
        if content_type:
            h["Content-Type"] = [content_type]
        if csrf and self.csrf_token():
            h["X-CSRF-Token"] = [self.csrf_token() or ""]
        for k, v in (headers or {}).items():
            h[k] = [v]
        r = await self.http.request(method, self.base + path, headers=Headers(h), data=body)
        content = await r.content()
        self._absorb(r.headers)
        return Response(r.code, r.headers, content)

    async def post(self, endpoint: str, params: Any = None, **kw: Any) -> Response:
        body = json.dumps(params if params is not None else {}).encode()
        return await self.request("POST", "/api/v2/" + endpoint, body=body, content_type="application/json", **kw)

    async def get(self, endpoint: str, **kw: Any) -> Response:
        return await self.request("GET", "/api/v2/" + endpoint, **kw)

    async def sign_up(self, email: str, password: str = "a-Good-passphrase", **extra: Any) -> Response:
        """Sign up as the web page does. While the hub hides whether emails have accounts (it
        answers 202 and signs nobody in: the default), sign in next and answer with that, its
        200 given as 201 when it worked (the new account is signed in either way)."""
        r = await self.post("auth/sign-up", {"email": email, "password": password, "firstName": "T",
                                             "lastName": "User", **extra})
        if r.code != 202:
            return r
        signed = await self.sign_in(email, password)
        if signed.code == 200:
            signed.code = 201
        return signed

    async def sign_in(self, email: str, password: str = "a-Good-passphrase") -> Response:
        return await self.post("auth/sign-in", {"email": email, "password": password})
