"""The hub API over conat (upstream ``server/conat/api``): ``hub.<account|project>.<id>.api``.

Requests are ``{name: "<group>.<function>", args: [...]}``; the answer is the function's
result (``null`` when it has none) or ``{error: "Error: <message>", code}`` as plain data,
as upstream's ``handleApiRequest`` does. Who calls is read from the subject, never from
the arguments: the broker lets an account or project publish only under
``hub.<type>.<own id>.``, so the subject is the proof. Every call goes through the same
code and permission checks as the JSON API (:class:`~cocalc_hub.projects.operations.Projects`
and :class:`~cocalc_hub.auth.accounts.Accounts`). :data:`FUNCTIONS` lists what is served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cocalc_hub import __version__
from cocalc_hub.auth.accounts import Accounts, AuthError
from cocalc_hub.auth.caller import Caller
from cocalc_hub.conat.client import Client
from cocalc_hub.conat.message import JSON, MSGPACK, Message, Subscription
from cocalc_hub.db.store import DatabaseUnavailable, Store, is_uuid, normalize_uuid
from cocalc_hub.projects.operations import Projects, project_id_param

log = Logger()

SUBJECT = "hub.*.*.api"
QUEUE = "0"
MAX_REQUEST = 64 * 1024
"""Bytes; every supported call fits in far less, and the broker would allow 8 MB."""
MAX_NAME = 100


class ApiCallError(Exception):
    """A refusal for the caller: becomes ``{error: "Error: <message>", code}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_reply(code: int, message: str) -> dict[str, Any]:
    """Upstream's ``{error: String(err)}``, plus the HTTP-like status the JSON API would use."""
    return {"error": f"Error: {message}", "code": code}


# arguments ------------------------------------------------------------------------------------


def options(name: str, args: list[Any]) -> dict[str, Any]:
    """The single options object upstream functions take (``args[0]``), ``{}`` if none."""
    if len(args) > 1:
        raise ApiCallError(400, f"{name} takes at most one argument (an options object)")
    first = args[0] if args else None
    if first is None:
        return {}
    if not isinstance(first, dict):
        raise ApiCallError(400, f"the argument of {name} must be an object")
    return first


def nested(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Upstream's collaborator calls nest their parameters in ``opts``; accept them flat too."""
    if "opts" not in opts:
        return opts
    inner = opts["opts"]
    if not isinstance(inner, dict):
        raise ApiCallError(400, f"opts of {name} must be an object")
    return inner


def project_id_of(opts: dict[str, Any]) -> str:
    if opts.get("project_id") is None:
        raise ApiCallError(400, "missing argument 'project_id'")
    return project_id_param(opts["project_id"])


def flag(opts: dict[str, Any], key: str) -> bool:
    value = opts.get(key, False)
    if not isinstance(value, bool):
        raise ApiCallError(400, f"{key} must be true or false")
    return value


# the functions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a function may use: the caller (from the subject) and the hub's operations."""

    caller: Caller
    api: HubApi


Impl = Callable[[Context, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Function:
    impl: Impl
    projects_too: bool = False
    """Project callers may call it too (otherwise: accounts only)."""
    doc: str = ""


async def _ping(ctx: Context, opts: dict[str, Any]) -> Any:
    return {"now": int(time.time() * 1000)}


async def _version(ctx: Context, opts: dict[str, Any]) -> Any:
    return {"version": __version__}


async def _test(ctx: Context, opts: dict[str, Any]) -> Any:
    who = {"account_id": ctx.caller.account_id} if ctx.caller.is_account else {"project_id": ctx.caller.project_id}
    return {**who, "server_time": int(time.time() * 1000)}


async def _profile(ctx: Context, opts: dict[str, Any]) -> Any:
    return (await ctx.api.accounts.require_account(ctx.caller)).public()


async def _create(ctx: Context, opts: dict[str, Any]) -> Any:
    project = await ctx.api.projects.create(ctx.caller, title=opts.get("title"), description=opts.get("description"),
                                            project_id=opts.get("project_id"))
    return project.project_id


async def _list(ctx: Context, opts: dict[str, Any]) -> Any:
    projects = await ctx.api.projects.list_for(ctx.caller, include_deleted=flag(opts, "include_deleted"))
    return [p.public() for p in projects]


async def _get(ctx: Context, opts: dict[str, Any]) -> Any:
    return (await ctx.api.projects.get(ctx.caller, project_id_of(opts))).public()


async def _update(ctx: Context, opts: dict[str, Any]) -> Any:
    project = await ctx.api.projects.update(ctx.caller, project_id_of(opts), title=opts.get("title"),
                                            description=opts.get("description"))
    return project.public()


async def _start(ctx: Context, opts: dict[str, Any]) -> Any:
    return await ctx.api.projects.start(ctx.caller, project_id_of(opts))


async def _stop(ctx: Context, opts: dict[str, Any]) -> Any:
    return await ctx.api.projects.stop(ctx.caller, project_id_of(opts))


async def _restart(ctx: Context, opts: dict[str, Any]) -> Any:
    return await ctx.api.projects.restart(ctx.caller, project_id_of(opts))


async def _state(ctx: Context, opts: dict[str, Any]) -> Any:
    return await ctx.api.projects.state(ctx.caller, project_id_of(opts))


async def _add_collaborator(ctx: Context, opts: dict[str, Any]) -> Any:
    inner = nested("projects.addCollaborator", opts)
    project_id = project_id_of(inner)
    email = inner.get("email_address", inner.get("email"))
    added = await ctx.api.projects.add_collaborator(ctx.caller, project_id, account_id=inner.get("account_id"),
                                                    email_address=email)
    return {"project_id": project_id, "account_id": added}


async def _remove_collaborator(ctx: Context, opts: dict[str, Any]) -> Any:
    inner = nested("projects.removeCollaborator", opts)
    if inner.get("account_id") is None:
        raise ApiCallError(400, "missing argument 'account_id'")
    await ctx.api.projects.remove_collaborator(ctx.caller, project_id_of(inner), inner["account_id"])
    return None


async def _collaborators(ctx: Context, opts: dict[str, Any]) -> Any:
    return await ctx.api.projects.collaborators(ctx.caller, project_id_of(opts))


FUNCTIONS: dict[str, Function] = {
    "system.ping": Function(_ping, True, "() → {now: ms since the epoch}"),
    "system.getVersion": Function(_version, True, "() → {version}"),
    "system.test": Function(_test, True, "() → {account_id | project_id, server_time}"),
    "accounts.profile": Function(_profile, False, "() → the caller's account (as accounts/profile)"),
    "projects.createProject": Function(_create, False, "({title?, description?, project_id? (admins)}) → project_id"),
    "projects.list": Function(_list, True, "({include_deleted?}) → [project]"),
    "projects.get": Function(_get, True, "({project_id}) → project"),
    "projects.update": Function(_update, False, "({project_id, title?, description?}) → project"),
    "projects.start": Function(_start, False, "({project_id}) → state"),
    "projects.stop": Function(_stop, False, "({project_id}) → state"),
    "projects.restart": Function(_restart, False, "({project_id}) → state"),
    "projects.state": Function(_state, True, "({project_id}) → state"),
    "projects.addCollaborator": Function(_add_collaborator, False,
                                         "({opts: {project_id, account_id | email_address}}) → {project_id, "
                                         "account_id}"),
    "projects.removeCollaborator": Function(_remove_collaborator, False,
                                            "({opts: {project_id, account_id}}) → null"),
    "projects.listCollaborators": Function(_collaborators, False, "({project_id}) → [collaborator]"),
}


# dispatch ------------------------------------------------------------------------------------


class HubApi:
    """Turns ``(subject, request)`` into a reply; never raises."""

    def __init__(self, store: Store, accounts: Accounts, projects: Projects,
                 functions: dict[str, Function] | None = None) -> None:
        self.store = store
        self.accounts = accounts
        self.projects = projects
        self.functions = FUNCTIONS if functions is None else functions

    async def caller_for(self, subject: str) -> Caller:
        """The caller the subject names: ``hub.account.<uuid>.api`` or ``hub.project.<uuid>.api``."""
        parts = subject.split(".")
        if len(parts) != 4 or parts[1] not in ("account", "project") or not is_uuid(parts[2]):
            raise ApiCallError(400, "the subject must be hub.account.<account_id>.api or hub.project.<project_id>.api")
        kind, ident = parts[1], normalize_uuid(parts[2])
        if kind == "account":
            account = await self.store.get_account(ident)
            if account is None or account.deleted or account.banned:
                raise ApiCallError(401, "you must be signed in")
            return Caller(kind="account", account_id=account.account_id, is_admin=account.is_admin, via="conat")
        project = await self.store.get_project(ident)
        if project is None or project.deleted:
            raise ApiCallError(404, "no such project")
        return Caller(kind="project", project_id=project.project_id, via="conat")

    async def handle(self, subject: str, request: Any) -> Any:
        name = request.get("name") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict) or not isinstance(name, str):
                raise ApiCallError(400, "a hub API request is {name: '<group>.<function>', args: [...]}")
            args = request.get("args")
            if args is None:
                args = []
            if not isinstance(args, list):
                raise ApiCallError(400, "args must be a list")
            function = self.functions.get(name)
            if function is None:
                raise ApiCallError(404, f"unknown function '{name[:MAX_NAME]}'")
            caller = await self.caller_for(subject)
            if caller.kind == "project" and not function.projects_too:
                raise ApiCallError(403, "only accounts may do this")
            log.debug("hub API {name} from {kind} {who}", name=name, kind=caller.kind,
                      who=caller.account_id or caller.project_id)
            return await function.impl(Context(caller, self), options(name, args))
        except (ApiCallError, AuthError) as e:
            code = e.code if isinstance(e, ApiCallError) else e.status
            return error_reply(code, e.message)
        except DatabaseUnavailable:
            log.failure("database unavailable during hub API call {name}", name=str(name)[:MAX_NAME])
            return error_reply(503, "the database is unavailable; try again shortly")
        except Exception:
            log.failure("hub API call {name} failed", name=str(name)[:MAX_NAME])
            return error_reply(500, "internal server error")


def jsonable(value: Any) -> Any:
    """A value JSON can carry (for requests sent with the JSON codec)."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


# the service ---------------------------------------------------------------------------------


class ConatApiService(service.Service):
    """Subscribes ``hub.*.*.api`` (queue "0", so several API processes share the load) and
    answers each request concurrently. Retries until the broker is reachable."""

    name = "conat-api"

    def __init__(self, api: HubApi, connect: Callable[[], Client], reactor: IReactorTime, *,
                 grace: float = 5.0) -> None:
        self.api = api
        self.connect = connect
        self.reactor = reactor
        self.grace = grace
        self.client: Client | None = None
        self.subscription: Subscription | None = None
        self._run: Deferred[None] | None = None
        self._ready: list[Deferred[None]] = []
        self._inflight: set[Deferred[None]] = set()
        self._drained: Deferred[None] | None = None

    def when_ready(self) -> Deferred[None]:
        """Fires once the subscription is live (tests, health)."""
        d: Deferred[None] = Deferred()
        if self.subscription is not None and not self.subscription.closed:
            d.callback(None)
        else:
            self._ready.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        self._run = Deferred.fromCoroutine(self._subscribe())
        self._run.addErrback(lambda f: f.trap(CancelledError))

    async def _subscribe(self) -> None:
        delay = 1.0
        while self.running:
            client = self.client = self.connect()
            try:
                await client.signed_in(timeout=None)
                self.subscription = await client.subscribe(SUBJECT, queue=QUEUE, callback=self._on_message)
            except Exception as e:
                client.close()
                self.client = None
                if not self.running or isinstance(e, CancelledError):
                    return
                log.warn("conat API: cannot subscribe to {subject} ({error}); retrying in {delay} s",
                         subject=SUBJECT, error=e, delay=delay)
                await task.deferLater(self.reactor, delay, lambda: None)
                delay = min(15.0, delay * 2)
                continue
            log.info("conat API: serving {subject}", subject=SUBJECT)
            ready, self._ready = self._ready, []
            for d in ready:
                d.callback(None)
            return

    def _on_message(self, msg: Message) -> None:
        d: Deferred[None] = ensureDeferred(self._answer(msg))
        if not d.called:
            self._inflight.add(d)
            d.addBoth(lambda r: self._finished(d, r))

    def _finished(self, d: Deferred[None], result: Any) -> Any:
        self._inflight.discard(d)
        if not self._inflight and self._drained is not None and not self._drained.called:
            self._drained.callback(None)
        return result

    async def _answer(self, msg: Message) -> None:
        if not msg.is_request():
            return  # nobody to answer (a publish without a reply subject)
        encoding = msg.encoding if msg.encoding in (MSGPACK, JSON) else MSGPACK
        if len(msg.raw) > MAX_REQUEST:
            reply: Any = error_reply(413, f"the request is larger than {MAX_REQUEST} bytes")
        else:
            try:
                request = msg.data
            except Exception:
                reply = error_reply(400, "the request could not be decoded")
            else:
                reply = await self.api.handle(msg.subject, request)
        if encoding == JSON:
            reply = jsonable(reply)
        try:
            await msg.respond(reply, encoding=encoding)
        except Exception as e:
            # The requester may be gone; there is nobody to tell.
            log.info("conat API: could not answer on {subject}: {error}", subject=msg.subject, error=e)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """Stop taking requests, give those in flight ``grace`` seconds, then disconnect."""
        if self._run is not None and not self._run.called:
            self._run.cancel()
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        if self._inflight:
            gate = self._drained = Deferred()

            def give_up() -> None:
                if not gate.called:
                    gate.callback(None)

            timer = self.reactor.callLater(self.grace, give_up)
            await gate
            if timer.active():
                timer.cancel()
            if self._inflight:
                log.warn("conat API: stopped with {n} requests unanswered", n=len(self._inflight))
        if self.client is not None:
            self.client.close()
            self.client = None
        for d in self._ready:
            d.errback(CancelledError("the conat API service stopped"))
        self._ready = []


def build_conat_api(store: Store, accounts: Accounts, projects: Projects, connect: Callable[[], Client],
                    reactor: IReactorTime) -> ConatApiService:
    """The ``conat-api`` part of a hub."""
    return ConatApiService(HubApi(store, accounts, projects), connect, reactor)
