"""Host-root health checks: ``/alive`` for load balancers, ``/healthcheck`` per component."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from cocalc_hub.web.resource import HubResource

log = Logger()


@dataclass
class Status:
    ok: bool
    detail: str = ""


CheckResult = Status | Awaitable[Status]
Check = Callable[[], CheckResult]

CHECK_TIMEOUT = 5.0


class Health:
    """Components register a check; the hub is healthy when every check is."""

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self._checks: dict[str, Check] = {}
        self.shutting_down = False
        self.parts: list[str] = []
        """The parts this process runs (upstream's mode flags), listed in /healthcheck."""

    def register(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def unregister(self, name: str) -> None:
        self._checks.pop(name, None)

    def _run_one(self, name: str, check: Check) -> Deferred[tuple[str, Status]]:
        try:
            result = check()
        except Exception as e:
            log.failure("health check {name} raised", name=name)
            return succeed((name, Status(False, f"check failed: {type(e).__name__}")))
        if isinstance(result, Status):
            return succeed((name, result))

        async def wait() -> Status:
            return await result

        d: Deferred[Status] = ensureDeferred(wait())
        d.addTimeout(CHECK_TIMEOUT, self.reactor)

        def failed(f: Failure) -> Status:
            return Status(False, f"check failed: {f.getErrorMessage() or repr(f.value)}")

        return d.addErrback(failed).addCallback(lambda s: (name, s))

    def run(self) -> Deferred[dict[str, Status]]:
        ds = [self._run_one(n, c) for n, c in sorted(self._checks.items())]
        return gatherResults(ds).addCallback(dict)


class AliveResource(HubResource):
    """200 ``alive`` while serving; 503 once shutdown has begun."""

    def __init__(self, health: Health) -> None:
        super().__init__()
        self.health = health

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if self.health.shutting_down:
            request.setResponseCode(503)
            return b"shutting down\n"
        return b"alive\n"


class HealthcheckResource(HubResource):
    """JSON with each component's state; 503 when any is down."""

    def __init__(self, health: Health) -> None:
        super().__init__()
        self.health = health

    def render_GET(self, request: Request) -> object:
        def done(results: dict[str, Status]) -> None:
            ok = all(s.ok for s in results.values()) and not self.health.shutting_down
            body = {
                "status": "ok" if ok else "fail",
                "shutting_down": self.health.shutting_down,
                "parts": self.health.parts,
                "components": {n: {"ok": s.ok, "detail": s.detail} for n, s in results.items()},
            }
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            if request.method != b"HEAD":
                request.write(json.dumps(body, indent=1, sort_keys=True).encode() + b"\n")
            request.finish()

        finished = request.notifyFinish()
        lost: list[bool] = []
        finished.addErrback(lambda _: lost.append(True))

        def guarded(results: dict[str, Status]) -> None:
            if not lost:
                done(results)

        self.health.run().addCallback(guarded).addErrback(lambda f: log.failure("healthcheck", f))
        return NOT_DONE_YET
