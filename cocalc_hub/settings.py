"""The one place configuration is read: command-line options plus environment.

Everything is validated up front so that a bad value ends the process with one
line naming the setting, instead of a traceback minutes later.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cocalc_hub.packaged import IncompleteInstall, check_installation, package_path

# The parts of a hub, as upstream's mode flags name them.
PARTS = ("conat-server", "conat-api", "conat-persist", "proxy-server")
# Parts that need the HTTP listener (upstream: conat-server, conat-api, proxy).
HTTP_PARTS = frozenset({"conat-server", "conat-api", "proxy-server"})
PROJECT_MODES = ("single-user", "multi-user")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error")

DEFAULT_PORT = 5000
DEFAULT_HOSTNAME = "127.0.0.1"
PROJECT_ID_MARKER = "[project_id]"

_BASE_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")


class SettingsError(Exception):
    """A configuration value is invalid; str() is one line naming the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one hub process."""

    listen: str
    """Twisted server endpoint description the HTTP listener uses."""
    hostname: str = DEFAULT_HOSTNAME
    base_path: str = "/"
    data_dir: Path = Path("data")
    secrets_dir: Path = Path("data/secrets")
    projects: str = "data/projects/[project_id]"
    static_dir: Path = Path("static")
    log_format: str = "text"
    log_level: str = "info"
    parts: frozenset[str] = frozenset(PARTS)
    project_mode: str = "single-user"
    https: bool = False
    trust_proxy: bool = False
    shutdown_grace: float = 10.0
    database_kind: str = "sqlite"
    database: str = ""
    """SQLite file path, or a PostgreSQL conninfo/URL ('' = libpq environment)."""
    database_wait: float = 30.0
    """Seconds to keep retrying an unreachable database at start-up."""
    remember_me_cookie_name: str | None = None
    project_start_timeout: float = 30.0
    project_stop_grace: float = 5.0
    idle_timeout: float = 1800.0
    idle_check_interval: float = 60.0
    min_run_time: float = 600.0
    project_limits: Mapping[str, int] = field(default_factory=dict)
    stop_projects_on_exit: bool = False
    adopt_projects: bool = True
    allow_root_projects: bool = False
    """Single-user mode as root: start projects anyway (they run as root)."""
    proxy_timeout: float = 120.0
    """Seconds a proxied backend may stay silent before 504 (or the stream is cut)."""
    conat_server: str | None = None
    """Address of the conat broker when this process does not run it (CONAT_SERVER)."""
    conat_max_connections: int = 10000
    conat_max_connections_per_user: int = 100
    conat_max_subscriptions_per_client: int = 500
    conat_max_subscriptions_per_hub: int = 15000
    conat_allowed_origins: frozenset[str] = frozenset()
    """Origins besides the hub's own whose pages may open a conat WebSocket with a browser's
    session cookie (normalised ``scheme://host[:port]``)."""
    persist_storage: str = "sqlite"
    """Where persist streams live: 'sqlite' (a file per stream), 'memory' or 'postgres'."""
    persist_database: str = ""
    """PostgreSQL conninfo for persist_storage 'postgres' ('' = libpq environment)."""
    sync_dir: Path = Path("data/sync")
    """Root of the SQLite stream files (COCALC_SYNC, else DATA/sync)."""
    persist_id: str = "0"
    persist_count: int = 1
    """This persist server's id among CONAT_PERSIST_COUNT servers ("0" … "N-1")."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    health_listener: bool = False
    """A process of none of the HTTP parts (a persist server) that was given --port: it
    listens for /alive, /healthcheck and /metrics only."""

    @property
    def serves_http(self) -> bool:
        """Whether this process runs the HTTP listener."""
        return bool(self.parts & HTTP_PARTS) or self.health_listener

    def path(self, suffix: str) -> str:
        """A URL path under the base path: path('/static/x') -> '/base/static/x'."""
        if not suffix.startswith("/"):
            suffix = "/" + suffix
        return suffix if self.base_path == "/" else self.base_path + suffix

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def package_static_dir() -> Path:
    """The web assets shipped inside the package (importlib.resources; see cocalc_hub.packaged)."""
    return package_path("cocalc_hub.web", "assets")


def default_data_dir(env: Mapping[str, str]) -> Path:
    """Where data lives when neither --data nor DATA says: $XDG_DATA_HOME, /var/lib for root, else ~/.local/share."""
    xdg = env.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "cocalc-hub"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/cocalc-hub")
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "cocalc-hub"


def validate_base_path(value: str) -> str:
    """Upstream's rules, plus: only URL-safe characters and no dot segments."""
    setting = "BASE_PATH"
    if not value.startswith("/"):
        raise SettingsError(setting, f"{value!r} must start with '/'")
    if value == "/":
        return value
    if value.endswith("/"):
        raise SettingsError(setting, f"{value!r} must not end with '/' (use '/' for the root)")
    if "://" in value:
        raise SettingsError(setting, f"{value!r} must be a path, not a URL")
    for segment in value[1:].split("/"):
        if segment in ("", ".", ".."):
            raise SettingsError(setting, f"{value!r} has an empty or dot segment")
        if not _BASE_PATH_SEGMENT.fullmatch(segment):
            raise SettingsError(setting, f"{value!r} contains characters that are not allowed in a URL path")
    return value


def parse_port_number(value: str, setting: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", value) or int(value) > 65535:
        raise SettingsError(setting, f"{value!r} is not a port number (0-65535) or an endpoint string")
    return int(value)


def _escape_endpoint_value(value: str) -> str:
    """Escape ':' and '=' and '\\' for a Twisted endpoint description."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _readable_file(path: str, setting: str) -> str:
    p = Path(path)
    try:
        with p.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise SettingsError(setting, f"cannot read {path!r}: {e.strerror or e}") from None
    return str(p.resolve())


def _writable_dir(path: Path, setting: str, mode: int = 0o755) -> Path:
    """Create the directory if needed and prove we can write into it."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as e:
        raise SettingsError(setting, f"cannot create directory {str(path)!r}: {e.strerror or e}") from None
    if not path.is_dir():
        raise SettingsError(setting, f"{str(path)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SettingsError(setting, f"directory {str(path)!r} is not writable: {e.strerror or e}") from None
    return path.resolve()


def listen_description(
    port: str | None,
    env: Mapping[str, str],
    hostname: str,
    https_key: str | None,
    https_cert: str | None,
) -> str:
    """Turn --port / PORT / --https-* into one Twisted endpoint description."""
    setting = "--port"
    raw = port
    if raw is None:
        raw = env.get("PORT")
        setting = "PORT"
    if raw is None or raw == "":
        raw = str(DEFAULT_PORT)
    raw = raw.strip()
    if (https_key is None) != (https_cert is None):
        raise SettingsError("--https-key/--https-cert", "give both the key and the certificate, or neither")
    iface = _escape_endpoint_value(hostname)
    if re.fullmatch(r"[0-9]+", raw):
        number = parse_port_number(raw, setting)
        if https_key is not None and https_cert is not None:
            key = _escape_endpoint_value(_readable_file(https_key, "--https-key"))
            cert = _escape_endpoint_value(_readable_file(https_cert, "--https-cert"))
            return f"ssl:{number}:interface={iface}:privateKey={key}:certKey={cert}"
        return f"tcp:{number}:interface={iface}"
    if ":" not in raw:
        raise SettingsError(setting, f"{raw!r} is not a port number (0-65535) or an endpoint string")
    if https_key is not None:
        raise SettingsError(
            "--https-key/--https-cert",
            "only combine with a bare port number; with an endpoint string use ssl:PORT:privateKey=...:certKey=...",
        )
    return raw


def check_endpoint(description: str, setting: str) -> None:
    """Parse the endpoint string now (this also loads TLS keys) so errors come early."""
    from cocalc_hub.reactors import global_reactor
    from cocalc_hub.web.tls import TlsConfigError, server_endpoint

    try:
        server_endpoint(global_reactor(), description)
    except TlsConfigError as e:
        raise SettingsError(setting, str(e)) from None
    except IndexError:
        if description.startswith("systemd:"):
            raise SettingsError(
                setting,
                f"{description!r}: systemd passed no such socket (LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES); "
                "start the hub through its .socket unit",
            ) from None
        raise SettingsError(setting, f"invalid endpoint {description!r}") from None
    except Exception as e:  # the parsers raise all sorts: ValueError, SSL errors, KeyError...
        detail = str(e) or type(e).__name__
        raise SettingsError(setting, f"invalid endpoint {description!r}: {detail}") from None


def database_setting(value: str | None, env: Mapping[str, str], data_dir: Path,
                     secrets_dir: Path) -> tuple[str, str]:
    """(kind, target) from --database, else PostgreSQL if PGHOST/PGDATABASE are set, else SQLite."""
    setting = "--database"
    if not value:
        if env.get("PGHOST") or env.get("PGDATABASE"):
            value, setting = "postgresql:", "PGHOST/PGDATABASE"
        else:
            value = "sqlite"
    if value == "sqlite" or value.startswith("sqlite:"):
        raw = value[len("sqlite:"):] if value.startswith("sqlite:") else ""
        path = Path(raw).expanduser() if raw else data_dir / "hub.db"
        if not path.is_absolute():
            path = path.resolve()
        _writable_dir(path.parent, setting)
        if path.exists() and not path.is_file():
            raise SettingsError(setting, f"{str(path)!r} is not a file")
        return "sqlite", str(path)
    if value.startswith(("postgresql:", "postgres:")) or "=" in value:
        conninfo = "" if value in ("postgresql:", "postgres:") else value
        import psycopg

        try:
            params = psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as e:
            raise SettingsError(setting, f"cannot parse the connection string: {e}") from None
        password_file = secrets_dir / "postgres"
        if "password" not in params and not env.get("PGPASSWORD") and password_file.is_file():
            # Upstream's convention: the database password lives in $SECRETS/postgres.
            params["password"] = password_file.read_text().strip()
            conninfo = psycopg.conninfo.make_conninfo(conninfo, password=params["password"])
        return "postgres", conninfo
    raise SettingsError(setting, f"{value!r} is neither 'sqlite', 'sqlite:PATH' nor a postgresql:// URL")


def persist_setting(options: Mapping[str, Any], env: Mapping[str, str], database_kind: str,
                    database: str) -> tuple[str, str]:
    """(storage kind, PostgreSQL conninfo) from --persist-storage / COCALC_PERSIST_STORAGE."""
    setting = "--persist-storage" if options.get("persist-storage") else "COCALC_PERSIST_STORAGE"
    value = str(options.get("persist-storage") or env.get("COCALC_PERSIST_STORAGE") or "sqlite")
    if value in ("sqlite", "memory"):
        return value, ""
    if value in ("postgres", "postgresql", "postgresql:", "postgres:"):
        # the hub's own PostgreSQL database when it has one, else the libpq environment
        return "postgres", database if database_kind == "postgres" else ""
    if value.startswith(("postgresql://", "postgres://")):
        import psycopg

        try:
            psycopg.conninfo.conninfo_to_dict(value)
        except psycopg.ProgrammingError as e:
            raise SettingsError(setting, f"cannot parse the connection string: {e}") from None
        return "postgres", value
    raise SettingsError(setting, f"{value!r} is not 'sqlite', 'memory', 'postgres' or a postgresql:// URL")


def _seconds(options: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"--{name}", f"{raw!r} is not a number of seconds") from None
    if not low <= value <= high:
        raise SettingsError(f"--{name}", f"{raw!r} must be between {low:g} and {high:g} seconds")
    return value


def _count(options: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", str(raw)) or not low <= int(raw) <= high:
        raise SettingsError(f"--{name}", f"{raw!r} must be a whole number between {low} and {high}")
    return int(raw)


def conat_server_setting(env: Mapping[str, str], parts: frozenset[str]) -> str | None:
    """CONAT_SERVER: where a process without the broker finds it (http[s]://host:port[/base])."""
    raw = (env.get("CONAT_SERVER") or "").strip()
    if not raw:
        return None
    from urllib.parse import urlsplit

    try:
        url = urlsplit(raw)
        port = url.port
    except ValueError as e:
        raise SettingsError("CONAT_SERVER", f"{raw!r} is not a URL: {e}") from None
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise SettingsError("CONAT_SERVER", f"{raw!r} must look like http[s]://host[:port][/base path]")
    if port is None and url.netloc.endswith(":"):
        raise SettingsError("CONAT_SERVER", f"{raw!r} has an empty port")
    return raw.rstrip("/")


def allowed_origins_setting(options: Mapping[str, Any], env: Mapping[str, str]) -> frozenset[str]:
    """--conat-allowed-origins / COCALC_CONAT_ALLOWED_ORIGINS: origins separated by commas or spaces."""
    from cocalc_hub.web.origins import BadOrigin, parse_allowed_origins

    raw = options.get("conat-allowed-origins")
    setting = "--conat-allowed-origins"
    if raw is None:
        raw, setting = env.get("COCALC_CONAT_ALLOWED_ORIGINS", ""), "COCALC_CONAT_ALLOWED_ORIGINS"
    try:
        return parse_allowed_origins(str(raw))
    except BadOrigin as e:
        raise SettingsError(setting, str(e)) from None


def _flag(options: Mapping[str, Any], name: str) -> bool:
    return bool(options.get(name))


_Fields = dict[str, Any]
"""Some of Settings' fields, by name: what each part of from_options returns."""


def from_options(options: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate the settings from parsed tap Options and the environment.

    One function per part, called in this order (which decides which of several bad values
    is reported)."""
    if env is None:
        env = os.environ
    try:
        check_installation()
    except IncompleteInstall as e:
        raise SettingsError("installation", str(e)) from None
    network = _network_settings(options, env)
    files = _file_settings(options, env)
    logging = _log_settings(options)
    process = _process_settings(options, env)
    database = _database_settings(options, env, files["data_dir"], files["secrets_dir"])
    auth = _auth_settings(env)
    limits = _project_limits(options)
    persist = _persist_settings(options, env, process["parts"], database["database_kind"], database["database"],
                                files["data_dir"])
    conat_server = _conat_server(env, process["parts"])
    projects = _project_settings(options, env)
    conat = _conat_limits(options, env)
    return Settings(
        **network, **files, **logging, **process, **database, **auth, **limits, **persist, **conat_server,
        **projects, **conat,
        health_listener=not process["parts"] & HTTP_PARTS and options.get("port") is not None,
    )


def _network_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> _Fields:
    """The listener (port or TLS), host name and base path."""
    hostname = options.get("hostname") or env.get("COCALC_HUB_HOSTNAME") or DEFAULT_HOSTNAME
    if any(c.isspace() for c in hostname) or hostname.startswith("-"):
        raise SettingsError("--hostname", f"{hostname!r} is not a host name or address")

    listen = listen_description(
        options.get("port"), env, hostname, options.get("https-key"), options.get("https-cert")
    )
    if options.get("https-key"):
        port_setting = "--https-key/--https-cert"
    elif options.get("port") is not None:
        port_setting = "--port"
    else:
        port_setting = "PORT"
    check_endpoint(listen, port_setting)
    https = listen.startswith(("ssl:", "tls:", "le:", "lets:", "txsni:"))

    base_path = validate_base_path(env.get("BASE_PATH", "/") or "/")
    return {"listen": listen, "hostname": hostname, "base_path": base_path, "https": https}


def _file_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> _Fields:
    """Directories: data, secrets, projects' homes, static assets."""
    data_raw = options.get("data") or env.get("DATA")
    data_setting = "--data" if options.get("data") else "DATA"
    data_dir = Path(data_raw) if data_raw else default_data_dir(env)
    if not data_raw:
        data_setting = "data directory"
    data_dir = _writable_dir(data_dir.expanduser(), data_setting, mode=0o700)

    secrets_raw = env.get("SECRETS")
    secrets_dir = _writable_dir(Path(secrets_raw) if secrets_raw else data_dir / "secrets", "SECRETS", mode=0o700)
    try:
        if not secrets_raw:
            os.chmod(secrets_dir, 0o700)
    except OSError as e:
        raise SettingsError("SECRETS", f"cannot restrict {str(secrets_dir)!r} to mode 0700: {e.strerror}") from None

    projects = env.get("PROJECTS") or str(data_dir / "projects" / PROJECT_ID_MARKER)
    if PROJECT_ID_MARKER not in projects:
        raise SettingsError("PROJECTS", f"{projects!r} must contain the literal {PROJECT_ID_MARKER}")
    if not os.path.isabs(projects):
        projects = os.path.abspath(projects)

    static_raw = options.get("static")
    static_dir = Path(static_raw).expanduser() if static_raw else package_static_dir()
    if not static_dir.is_dir() or not os.access(static_dir, os.R_OK | os.X_OK):
        raise SettingsError("--static", f"{str(static_dir)!r} is not a readable directory")
    static_dir = static_dir.resolve()
    return {"data_dir": data_dir, "secrets_dir": secrets_dir, "projects": projects, "static_dir": static_dir}


def _log_settings(options: Mapping[str, Any]) -> _Fields:
    log_format = (options.get("log-format") or "text").lower()
    if log_format not in LOG_FORMATS:
        raise SettingsError("--log-format", f"{log_format!r} is not one of {', '.join(LOG_FORMATS)}")

    log_level = str(options.get("log-level") or "info").lower()
    if log_level == "warning":
        log_level = "warn"
    if log_level not in LOG_LEVELS:
        raise SettingsError("--log-level", f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    return {"log_format": log_format, "log_level": log_level}


def _process_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> _Fields:
    """The project mode, which parts of a hub this process runs, the shutdown grace."""
    mode = options.get("mode") or env.get("COCALC_MODE") or "single-user"
    if _flag(options, "multi-user"):
        mode = "multi-user"
    if mode not in PROJECT_MODES:
        mode_setting = "--mode" if options.get("mode") else "COCALC_MODE"
        raise SettingsError(mode_setting, f"unknown mode {mode!r}; use one of {', '.join(PROJECT_MODES)}")

    chosen = frozenset(p for p in PARTS if _flag(options, p))
    parts = frozenset(PARTS) if _flag(options, "all") or not chosen else chosen

    grace_raw = options.get("shutdown-grace")
    try:
        grace = float(grace_raw) if grace_raw is not None else 10.0
    except (TypeError, ValueError):
        raise SettingsError("--shutdown-grace", f"{grace_raw!r} is not a number of seconds") from None
    if not 0 <= grace <= 3600:
        raise SettingsError("--shutdown-grace", f"{grace_raw!r} must be between 0 and 3600 seconds")
    return {"project_mode": mode, "parts": parts, "trust_proxy": _flag(options, "trust-proxy"),
            "shutdown_grace": grace}


def _database_settings(options: Mapping[str, Any], env: Mapping[str, str], data_dir: Path,
                       secrets_dir: Path) -> _Fields:
    database_kind, database = database_setting(options.get("database"), env, data_dir, secrets_dir)
    wait_raw = options.get("database-wait")
    try:
        database_wait = float(wait_raw) if wait_raw is not None else 30.0
    except (TypeError, ValueError):
        raise SettingsError("--database-wait", f"{wait_raw!r} is not a number of seconds") from None
    if not 0 <= database_wait <= 3600:
        raise SettingsError("--database-wait", f"{wait_raw!r} must be between 0 and 3600 seconds")
    return {"database_kind": database_kind, "database": database, "database_wait": database_wait}


def _auth_settings(env: Mapping[str, str]) -> _Fields:
    cookie_name = env.get("COCALC_REMEMBER_ME_COOKIE_NAME") or None
    if cookie_name is not None and not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}", cookie_name):
        raise SettingsError("COCALC_REMEMBER_ME_COOKIE_NAME", f"{cookie_name!r} is not a valid cookie name")
    return {"remember_me_cookie_name": cookie_name}


def _project_limits(options: Mapping[str, Any]) -> _Fields:
    """--project-memory (MiB), --project-processes, --project-cpu."""
    project_limits: dict[str, int] = {}
    for option, name, scale in (("project-memory", "memory", 1024 * 1024), ("project-processes", "processes", 1),
                                ("project-cpu", "cpu", 1)):
        raw_limit = options.get(option)
        if raw_limit is not None:
            if not re.fullmatch(r"[0-9]{1,12}", str(raw_limit)) or int(raw_limit) <= 0:
                raise SettingsError(f"--{option}", f"{raw_limit!r} is not a positive whole number")
            project_limits[name] = int(raw_limit) * scale
    return {"project_limits": project_limits}


def _persist_settings(options: Mapping[str, Any], env: Mapping[str, str], parts: frozenset[str],
                      database_kind: str, database: str, data_dir: Path) -> _Fields:
    """Where conat's persist streams live, and this persist server's id among how many."""
    persist_storage, persist_database = persist_setting(options, env, database_kind, database)
    sync_raw = env.get("COCALC_SYNC")
    sync_dir = Path(sync_raw).expanduser() if sync_raw else data_dir / "sync"
    if "conat-persist" in parts and persist_storage == "sqlite":
        sync_dir = _writable_dir(sync_dir, "COCALC_SYNC", mode=0o700)
    count_raw = options.get("persist-count") or env.get("CONAT_PERSIST_COUNT")
    count_setting = "--persist-count" if options.get("persist-count") else "CONAT_PERSIST_COUNT"
    if count_raw is not None and not (re.fullmatch(r"[0-9]{1,4}", str(count_raw)) and 1 <= int(count_raw) <= 1000):
        raise SettingsError(count_setting, f"{count_raw!r} must be a whole number between 1 and 1000")
    persist_count = int(count_raw) if count_raw is not None else 1
    persist_id = str(options.get("persist-id") or "0")
    if not (re.fullmatch(r"[0-9]{1,4}", persist_id) and int(persist_id) < persist_count):
        raise SettingsError("--persist-id", f"{persist_id!r} must be one of 0 … {persist_count - 1} "
                                            f"(there are {persist_count} persist servers)")
    return {"persist_storage": persist_storage, "persist_database": persist_database, "sync_dir": sync_dir,
            "persist_id": str(int(persist_id)), "persist_count": persist_count}


def _conat_server(env: Mapping[str, str], parts: frozenset[str]) -> _Fields:
    """CONAT_SERVER, required when this process runs conat parts without the broker."""
    conat_server = conat_server_setting(env, parts)
    needs_broker = sorted(parts & {"conat-api", "conat-persist"})
    if needs_broker and "conat-server" not in parts and not conat_server:
        raise SettingsError("CONAT_SERVER", f"--{' and --'.join(needs_broker)} without --conat-server need the "
                                            "address of the conat broker in CONAT_SERVER")
    return {"conat_server": conat_server}


def _project_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> _Fields:
    """Projects' start, stop and idle timing, what the hub does with them, the proxy's timeout."""
    idle_disabled = bool(env.get("COCALC_NO_IDLE_TIMEOUT"))
    return {
        "project_start_timeout": _seconds(options, "project-start-timeout", 30.0, 1, 3600),
        "project_stop_grace": _seconds(options, "project-stop-grace", 5.0, 0, 600),
        "idle_timeout": _seconds(options, "idle-timeout", 1800.0, 0, 10 ** 8),
        "idle_check_interval": 0.0 if idle_disabled else _seconds(options, "idle-check-interval", 60.0, 0, 86400),
        "min_run_time": _seconds(options, "min-run-time", 600.0, 0, 10 ** 8),
        "stop_projects_on_exit": _flag(options, "stop-projects-on-exit"),
        "adopt_projects": not _flag(options, "no-adopt-projects"),
        "allow_root_projects": _flag(options, "allow-root-projects")
        or env.get("COCALC_ALLOW_ROOT_PROJECTS", "").lower() in ("1", "true", "yes"),
        "proxy_timeout": _seconds(options, "proxy-timeout", 120.0, 0, 86400),
    }


def _conat_limits(options: Mapping[str, Any], env: Mapping[str, str]) -> _Fields:
    """The broker's connection and subscription limits, and the Origins it also accepts."""
    return {
        "conat_max_connections": _count(options, "conat-max-connections", 10000, 1, 10 ** 6),
        "conat_max_connections_per_user": _count(options, "conat-max-connections-per-user", 100, 1, 10 ** 6),
        "conat_max_subscriptions_per_client": _count(options, "conat-max-subscriptions-per-client", 500, 1,
                                                     10 ** 7),
        "conat_max_subscriptions_per_hub": _count(options, "conat-max-subscriptions-per-hub", 15000, 1, 10 ** 7),
        "conat_allowed_origins": allowed_origins_setting(options, env),
    }
