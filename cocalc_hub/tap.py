"""``twistd cocalc-hub``: the composition of the hub's services.

``makeService`` turns the options (:mod:`cocalc_hub.options`) into one validated
:class:`Settings` and builds a :class:`HubService` whose children are the parts the mode
flags select.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.components import Componentized

from cocalc_hub import __version__, logs, private_files
from cocalc_hub.auth import project_tokens
from cocalc_hub.auth.bootstrap import SETUP_PATH, AdminSetup, AdminSetupService
from cocalc_hub.auth.secrets import read_or_create
from cocalc_hub.auth.service import AuthParts, AuthService, build_auth
from cocalc_hub.broker_link import BrokerLink
from cocalc_hub.bus.gateway import HubConatNode
from cocalc_hub.conat.broker import BrokerConfig
from cocalc_hub.conat.client import Client, connect
from cocalc_hub.conat.local import LocalTransport
from cocalc_hub.conat.node import ConatService
from cocalc_hub.db import StoreService, prepare_store
from cocalc_hub.db.revocations import Revocation, RevocationFeed
from cocalc_hub.options import Options  # noqa: F401  (twistd's ServiceMaker reads tap.Options)
from cocalc_hub.projects.client import ProjectClient, ProjectClientService
from cocalc_hub.projects.manager import ROOT_REFUSAL, ManagerConfig, ProjectManager
from cocalc_hub.projects.operations import Projects
from cocalc_hub.projects.publish import StatePublisher
from cocalc_hub.projects.status import StatusRecorder
from cocalc_hub.proxy.access import ProxyAccess
from cocalc_hub.proxy.conat_forward import ConatForwardResource
from cocalc_hub.proxy.core import Proxy, ProxyService
from cocalc_hub.proxy.frontdoor import FrontDoorFactory
from cocalc_hub.proxy.guard import ChannelGuard
from cocalc_hub.reactors import IHubReactor, global_reactor
from cocalc_hub.settings import HTTP_PARTS, Settings, SettingsError, from_options, package_static_dir
from cocalc_hub.web.api import ApiResource, ApiServices
from cocalc_hub.web.api.registry import api_endpoints
from cocalc_hub.web.errors import ErrorResource
from cocalc_hub.web.files import GzipCache
from cocalc_hub.web.health import AliveResource, Health, HealthcheckResource, Status
from cocalc_hub.web.metrics import HubMetrics, MetricsResource
from cocalc_hub.web.origins import OriginPolicy
from cocalc_hub.web.pages import SEGMENTS as PAGE_SEGMENTS
from cocalc_hub.web.pages import PagesResource
from cocalc_hub.web.site import HubSite, ListenError, Router, WebService
from cocalc_hub.web.static import FaviconResource, RobotsResource, StaticResource, TemplatePage

log = Logger()


class HubService(service.MultiService):
    """The whole hub; when attached to a twistd Application it also provides the log observer."""

    def __init__(self, settings: Settings, reactor: IHubReactor, observer: ILogObserver | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.observer = observer
        self.web: WebService | None = None
        self.web_parts: WebParts | None = None
        self.store: Any = None
        self.auth: AuthParts | None = None
        self.projects: Projects | None = None
        self.proxy: Proxy | None = None
        self.conat: HubConatNode | None = None
        self.admin_setup: AdminSetup | None = None
        self.broker_link: BrokerLink | None = None
        self.handle_sighup = False
        """Reload on SIGHUP (set by makeService; in-process test hubs leave signals alone)."""
        self._previous_sighup: Any = None

    async def database_status(self) -> Status:
        try:
            await self.store.ping()
        except Exception as e:
            return Status(False, f"{self.settings.database_kind}: {' '.join(str(e).split())[:200]}")
        return Status(True, self.settings.database_kind)

    def conat_client(self) -> Client:
        """A conat client for this process's own services: in-process when the broker runs
        here, otherwise over a socket to CONAT_SERVER with the hub password."""
        if self.conat is not None:
            return Client(self.reactor, LocalTransport(self.conat.broker))
        if not self.settings.conat_server:
            raise RuntimeError("this hub process does not run conat and CONAT_SERVER is not set")
        from cocalc_hub.auth.cookies import CookieNames
        from cocalc_hub.auth.secrets import read_or_create

        names = CookieNames.for_base_path(self.settings.base_path)
        password = read_or_create(self.settings.secrets_dir, "conat-password")
        return connect(self.reactor, self.settings.conat_server, cookies={names.hub_password: password})

    def setServiceParent(self, parent: Any) -> Any:
        if self.observer is not None and isinstance(parent, Componentized):
            # twistd's AppLogger uses the application's ILogObserver component if there is one.
            parent.setComponent(ILogObserver, self.observer)
        return super().setServiceParent(parent)

    def listen(self) -> None:
        """Open the HTTP listener (idempotent); failure ends the process with one line."""
        if self.web is None or self.web.port is not None:
            return
        try:
            self.web.listen()
        except ListenError as e:
            raise SystemExit(f"cocalc-hub: --port: {e}") from None
        port = getattr(self.web, "port", None)
        if self.conat is not None and port is not None:
            self.conat.broker.config.address = public_url(self.settings, port).rstrip("/")

    def privilegedStartService(self) -> None:
        self.listen()
        super().privilegedStartService()

    def reload(self) -> None:
        """What SIGHUP does: read the listener's TLS certificate and key again."""
        tls = self.web.tls if self.web is not None else None
        if tls is None:
            log.info("SIGHUP: nothing to reload (the listener does not use ssl:)")
            return
        tls.reload()

    def startService(self) -> None:
        self.listen()
        super().startService()
        if self.handle_sighup:
            import signal

            def on_sighup(signum: int, frame: Any) -> None:
                self.reactor.callFromThread(self.reload)

            self._previous_sighup = signal.signal(signal.SIGHUP, on_sighup)
        # Announced once the reactor runs, i.e. once SIGTERM is handled gracefully.
        self.reactor.callWhenRunning(
            log.info, "cocalc-hub {version} running: {parts}", version=__version__,
            parts=" ".join(sorted(self.settings.parts)))

    def stopService(self) -> Deferred[None]:
        """Stop the children one at a time, newest first: the listener drains before the
        services it uses stop, and databases (added first) are flushed last."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        log.info("cocalc-hub stopping")
        service.Service.stopService(self)
        if self._previous_sighup is not None:
            import signal

            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("error while stopping {name}", name=child.name)
        log.info("cocalc-hub stopped")


class WebParts:
    """What the HTTP side is made of; later parts mount themselves on ``router``."""

    def __init__(self, settings: Settings, reactor: IHubReactor) -> None:
        self.settings = settings
        self.reactor = reactor
        self.metrics = HubMetrics()
        self.health = Health(reactor)
        self.router = Router(settings.base_path)
        self.gzip_cache = GzipCache()
        self.site = HubSite(self.router, self.metrics, reactor, trust_proxy=settings.trust_proxy)


def public_url(settings: Settings, port: IListeningPort) -> str:
    """The URL a browser on this machine would use, for the startup log line."""
    addr = port.getHost()
    number = getattr(addr, "port", None)
    if number is None:
        return settings.path("/")
    host = getattr(addr, "host", settings.hostname)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.https else "http"
    return f"{scheme}://{host}:{number}{settings.path('/')}"


def setup_link(settings: Settings, hub: HubService, token: str) -> str:
    """The first-admin setup link for the startup log (token in the fragment)."""
    port = hub.web.port if hub.web is not None else None
    base = public_url(settings, port) if port is not None else settings.path("/")
    return f"{base.rstrip('/')}{SETUP_PATH}#token={token}"


def build_web(settings: Settings, reactor: IHubReactor) -> WebParts:
    """The HTTP site with the routes every hub serves (health, metrics, static, index)."""
    web = WebParts(settings, reactor)
    web.health.parts = sorted(settings.parts)
    web.site.access_level = _LEVELS[settings.log_level]
    r = web.router
    r.add_root(b"/alive", AliveResource(web.health), "health")
    r.add_root(b"/healthcheck", HealthcheckResource(web.health), "health")
    metrics = MetricsResource(web.metrics)
    r.add_root(b"/metrics", metrics, "metrics")
    r.mount("metrics", metrics, "metrics")
    robots = RobotsResource(settings.base_path)
    r.add_root(b"/robots.txt", robots, "robots")
    r.mount("robots.txt", robots, "robots")
    if not settings.parts & HTTP_PARTS:
        return web  # a persist server's health listener: nothing else to serve
    r.mount("static", StaticResource(settings.static_dir, web.gzip_cache), "static")
    favicon = FaviconResource([settings.static_dir / "favicon.ico", package_static_dir() / "favicon.ico"],
                              web.gzip_cache)
    r.add_root(b"/favicon.ico", favicon, "static")
    r.mount("favicon.ico", favicon, "static")
    index = settings.static_dir / "index.html"
    if not index.is_file():
        index = package_static_dir() / "index.html"
    r.set_index(TemplatePage(index, settings.base_path, web.gzip_cache))
    return web


def build_manager(settings: Settings, store: Any, reactor: IHubReactor, hub: HubService) -> ProjectManager:
    """The project manager; it learns the hub's own URL once the listener is up."""

    def hub_url() -> str:
        """Where projects reach this hub (and its conat broker, ``CONAT_SERVER``)."""
        if hub.web is None or hub.web.port is None:
            return ""
        addr = hub.web.port.getHost()
        port, host = getattr(addr, "port", None), getattr(addr, "host", "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
        scheme = "https" if settings.https else "http"  # the project skips certificate checks on loopback
        return f"{scheme}://{host}:{port}{'' if settings.base_path == '/' else settings.base_path}" if port else ""

    config = ManagerConfig(
        projects=settings.projects, multi_user=settings.project_mode == "multi-user",
        start_timeout=settings.project_start_timeout, stop_grace=settings.project_stop_grace,
        idle_interval=settings.idle_check_interval, idle_timeout=settings.idle_timeout,
        min_run_time=settings.min_run_time, adopt=settings.adopt_projects,
        stop_on_exit=settings.stop_projects_on_exit, limits=settings.project_limits, base_path=settings.base_path,
        hub_url=hub_url, token_key=project_tokens.load_key(read_or_create(settings.secrets_dir, "project-token-key")),
        allow_root=settings.allow_root_projects)
    manager = ProjectManager(store, config, reactor)
    if manager.runs_as_root():
        if settings.allow_root_projects:
            log.warn("projects run as root (single-user mode, hub running as root, --allow-root-projects)")
        else:
            log.warn("cocalc-hub: " + ROOT_REFUSAL)
    # State changes go out on conat (project.<id>.0.state.-), through the broker in this
    # process if it runs here, else CONAT_SERVER; never blocking a transition.
    publisher = StatePublisher(hub.conat_client)
    manager.listeners.append(publisher)
    manager.on_stop.append(publisher.close)
    return manager


def build_proxy(settings: Settings, hub: HubService, reactor: IHubReactor) -> Proxy:
    """The project proxy, sharing the hub's authenticator, store and project manager."""
    assert hub.auth is not None and hub.projects is not None and hub.projects.manager is not None
    auth = hub.auth
    access = ProxyAccess(auth.auth, hub.store, auth.names, reactor)
    origins = origin_policy(settings)
    auth.auth.listeners.append(access.forget_all)
    hub.projects.listeners.append(access.forget_project)

    known: dict[Any, set[int]] = {}

    def hub_ports() -> set[int]:
        """The hub's own listening port(s), looked up once per listening port."""
        port = hub.web.port if hub.web is not None else None
        if port not in known:
            number = getattr(port.getHost(), "port", None) if port is not None else None
            known.clear()
            known[port] = {number} if isinstance(number, int) else set()
        return known[port]

    proxy = Proxy(reactor=reactor, base_path=settings.base_path, access=access, manager=hub.projects.manager,
                  names=auth.names, hub_secret=auth.auth.hub_password, trust_proxy=settings.trust_proxy,
                  system_secret=auth.auth.system_password,
                  timeout=settings.proxy_timeout, hub_ports=hub_ports, csrf_token=auth.csrf.token,
                  foreign_origin=lambda origin, host, secure: origins.foreign_origin(
                      origin, origins.origin_of(host, secure)))
    # Open tunnels and streaming responses are re-checked (after the caches above are dropped).
    guard = proxy.guard = ChannelGuard(access, proxy.front_doors, reactor)
    auth.auth.revocations.append(guard.credentials_changed)
    hub.projects.listeners.append(guard.project_changed)
    return proxy


def origin_policy(settings: Settings) -> OriginPolicy:
    """Who may open a conat WebSocket, or one into a project, with a browser's cookie
    (cocalc_hub.web.origins)."""
    return OriginPolicy(settings.conat_allowed_origins, trust_proxy=settings.trust_proxy)


def conat_elsewhere(settings: Settings, reactor: IHubReactor) -> Any:
    """What ``BASE_PATH/conat/`` is in a process without the broker: a splice to CONAT_SERVER."""
    if settings.conat_server:
        from cocalc_hub.auth.cookies import CookieNames
        from cocalc_hub.bus.gateway import OriginCheck

        names = CookieNames.for_base_path(settings.base_path, settings.remember_me_cookie_name)
        return ConatForwardResource(reactor, settings.conat_server, trust_proxy=settings.trust_proxy,
                                    admit=OriginCheck(names, origin_policy(settings)))
    log.warn("this hub process does not run the conat broker and CONAT_SERVER is not set: "
             "clients connecting to {path} get 503", path=settings.path("/conat/"))
    return ErrorResource(503, "This hub process does not run conat and CONAT_SERVER is not set.")


def build_conat(settings: Settings, hub: HubService, reactor: IHubReactor) -> HubConatNode:
    """The conat broker, signing clients in through the hub's authenticator."""
    assert hub.auth is not None and hub.projects is not None
    config = BrokerConfig(max_connections=settings.conat_max_connections,
                          max_connections_per_user=settings.conat_max_connections_per_user,
                          max_subscriptions_per_client=settings.conat_max_subscriptions_per_client,
                          max_subscriptions_per_hub=settings.conat_max_subscriptions_per_hub)
    server = HubConatNode(reactor, auth=hub.auth.auth, names=hub.auth.names, store=hub.store, config=config,
                           trust_proxy=settings.trust_proxy, origins=origin_policy(settings))
    hub.projects.listeners.append(server.project_changed)
    return server


def revocations_to(auth: Any, projects: Projects) -> Any:
    """Revocations read from the database, handed to the same hooks this process's own API
    calls use (cached decisions dropped, open connections re-checked)."""

    def deliver(events: list[Revocation]) -> None:
        for kind, value in dict.fromkeys(events):
            if kind == "session":
                auth.forget_session(value)
            elif kind == "account":
                auth.forget_account(value)
            elif kind == "key" and value.isdigit():
                auth.forget_key(int(value))
            elif kind == "project":
                projects.changed(value)

    return deliver


def build_service(settings: Settings, reactor: IHubReactor, observer: ILogObserver | None = None, *,
                  password_cost: dict[str, int] | None = None) -> HubService:
    """Compose the hub from settings: each selected part becomes a child service.

    Children are stopped newest first, so the order here is: database, auth, … , web."""
    hub = HubService(settings, reactor, observer)
    private_files.repair(settings)  # before anything opens a file there
    if settings.parts & {"proxy-server", "conat-server", "conat-api"}:
        build_accounts_and_projects(settings, hub, reactor, password_cost)
    build_bus_side(settings, hub, reactor)
    if settings.serves_http:
        build_web_side(settings, hub, reactor)
    return hub


def build_accounts_and_projects(settings: Settings, hub: HubService, reactor: IHubReactor,
                                password_cost: dict[str, int] | None) -> None:
    """The database, sign-in and the project manager (when this process proxies)."""
    store = prepare_store(settings, reactor)
    StoreService(store).setServiceParent(hub)
    auth = build_auth(settings, store, reactor, password_cost=password_cost)
    AuthService(auth, store).setServiceParent(hub)
    hub.store, hub.auth = store, auth
    manager = None
    if "proxy-server" in settings.parts:
        manager = build_manager(settings, store, reactor, hub)
        manager.setServiceParent(hub)
    client = ProjectClient(reactor, settings.base_path)
    ProjectClientService(client).setServiceParent(hub)
    hub.projects = Projects(store, manager, client)
    hub.projects.listeners.append(auth.auth.forget_project)  # first: the others re-check through it
    # What other hub processes and cocalc-hub-admin revoke reaches this one's caches and connections.
    RevocationFeed(store, reactor, revocations_to(auth.auth, hub.projects)).setServiceParent(hub)
    if "proxy-server" in settings.parts:
        # While no administrator exists, a one-time setup link in the log (the pages are here).
        hub.admin_setup = AdminSetup(store, auth.accounts, reactor)
        AdminSetupService(hub.admin_setup, lambda token: setup_link(settings, hub, token)).setServiceParent(hub)


def build_bus_side(settings: Settings, hub: HubService, reactor: IHubReactor) -> None:
    """The conat broker or the link to one elsewhere, and the hub's services on the bus."""
    if "conat-server" in settings.parts:
        hub.conat = build_conat(settings, hub, reactor)
        ConatService(hub.conat).setServiceParent(hub)
    if hub.conat is None and settings.conat_server:
        # The broker runs elsewhere: make the link to it visible (logs, /healthcheck, /metrics).
        hub.broker_link = BrokerLink(settings.conat_server, hub.conat_client, reactor)
        hub.broker_link.setServiceParent(hub)
    if "conat-api" in settings.parts and hub.auth is not None and hub.projects is not None:
        from cocalc_hub.bus.api import build_conat_api

        # After the broker (started after it, stopped before it), before the web side.
        build_conat_api(hub.store, hub.auth.accounts, hub.projects, hub.conat_client, reactor).setServiceParent(hub)
    if "conat-persist" in settings.parts:
        from cocalc_hub.bus.persist import PersistService

        # After the broker it uses (so stopped before it): streams are flushed and closed first.
        PersistService(settings, reactor, hub.conat_client).setServiceParent(hub)
    if hub.projects is not None and hub.projects.manager is not None:
        # Each project's current state in its DKV project-status, besides the live events.
        # After the broker and persist server it writes to, so it is stopped before them.
        recorder = StatusRecorder(hub.conat_client, reactor)
        hub.projects.manager.listeners.append(recorder)
        recorder.setServiceParent(hub)


def build_web_side(settings: Settings, hub: HubService, reactor: IHubReactor) -> None:
    """The site, the JSON API and pages, the project proxy, conat's WebSocket endpoint, and
    the front door that listens for all of them (added last, so it is drained first)."""
    web = build_web(settings, reactor)
    hub.web_parts = web
    link = hub.broker_link
    if link is not None:
        web.health.register("conat-broker", link.status)
        web.metrics.gauge("cocalc_hub_conat_broker_up", "1 while the conat broker (CONAT_SERVER) is connected",
                          link.up_value)
    proxy = None
    if hub.auth is not None and hub.projects is not None and "proxy-server" in settings.parts:
        services = ApiServices(auth=hub.auth.auth, accounts=hub.auth.accounts, projects=hub.projects,
                               names=hub.auth.names, csrf=hub.auth.csrf, base_path=settings.base_path,
                               admin_setup=hub.admin_setup)
        web.router.mount("api", ApiResource(services, api_endpoints()), "api", json_errors=True)
        pages = PagesResource(services, settings.static_dir, web.gzip_cache)  # the web UI
        web.router.set_index(pages, "page")
        for segment in PAGE_SEGMENTS:
            web.router.mount(segment, pages, "page")
        web.health.register("database", hub.database_status)
        if hub.projects.manager is not None:
            proxy = build_proxy(settings, hub, reactor)
            ProxyService(proxy).setServiceParent(hub)
    hub.proxy = proxy
    conat = hub.conat
    if conat is not None:
        web.router.mount("conat", conat.resource, "conat")
        conat.report(web.metrics)
    elif "proxy-server" in settings.parts:
        web.router.mount("conat", conat_elsewhere(settings, reactor), "conat")

    def on_drain() -> None:
        web.health.shutting_down = True
        if conat is not None:
            conat.close_connections()  # WebSockets would otherwise hold the drain open

    front_door = FrontDoorFactory(web.site, proxy, reactor)
    if proxy is not None:
        proxy.front_doors.append(front_door.connections)  # what its guard re-checks on revocations
    hub.web = WebService(reactor, web.site, settings.listen, grace=settings.shutdown_grace,
                         public_url=lambda port: public_url(settings, port), on_drain=on_drain,
                         factory=front_door)

    def http_status() -> Status:
        if web.site.draining:
            return Status(False, "draining")
        return Status(hub.web is not None and hub.web.port is not None, "listening")

    web.health.register("http", http_status)
    hub.web.setServiceParent(hub)


_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


def raise_open_files_limit() -> None:
    """Use the hard limit on open files: every conat client and proxied connection is a
    descriptor, and the soft default (often 1024) would cap the hub long before memory does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def makeService(options: Mapping[str, Any]) -> HubService:
    """The twistd entry point. Bad settings end the process with one line, no traceback."""
    reactor = global_reactor()

    os.umask(private_files.UMASK)  # what the hub creates is its user's alone
    try:
        settings = from_options(options)
    except SettingsError as e:
        raise SystemExit(f"cocalc-hub: {e}") from None
    raise_open_files_limit()
    parent = getattr(options, "parent", None)
    observer = logs.make_observer(settings.log_format, logs.log_stream(parent), _LEVELS[settings.log_level])
    hub = build_service(settings, reactor, observer)
    hub.handle_sighup = True
    # Listen now, before twistd starts logging, so "port in use" is the only line printed.
    hub.listen()
    # What is built so far lives as long as the process: out of the cyclic collector's
    # sight, the full collections of a reconnect storm (every client at once after a
    # restart) walk the new connections only (they took ~15 % of the hub's CPU).
    gc.collect()
    gc.freeze()
    return hub
