"""The command line of ``twistd cocalc-hub`` (and of its alias ``cocalc-hub``): the options,
upstream's names for them, and one-line answers to mistakes."""

from __future__ import annotations

import sys

from twisted.python import usage

from cocalc_hub import __version__


class Options(usage.Options):
    """Options of ``twistd cocalc-hub``; upstream's names where upstream has them."""

    synopsis = "[options]"
    longdesc = (
        "Run the CoCalc hub. Without a mode flag every part runs in this process (--all). "
        "Environment: PORT, BASE_PATH, DATA, SECRETS, PROJECTS, COCALC_MODE, COCALC_HUB_HOSTNAME."
    )

    optParameters = [
        ["port", None, None, "Port number or Twisted endpoint (tcp:5000:interface=127.0.0.1, ssl:..., "
                             "unix:/run/cocalc-hub.sock, systemd:domain=INET:index=0). Default: $PORT or 5000."],
        ["hostname", None, None, "Interface for a bare port number. Default: $COCALC_HUB_HOSTNAME or 127.0.0.1."],
        ["https-key", None, None, "TLS private key (PEM); with --https-cert the listener speaks HTTPS."],
        ["https-cert", None, None, "TLS certificate chain (PEM)."],
        ["data", None, None, "Data directory (database, secrets, projects). Default: $DATA or "
                             "~/.local/share/cocalc-hub."],
        ["static", None, None, "Serve BASE_PATH/static/ from this directory instead of the built-in assets."],
        ["mode", None, None, "Project mode: single-user or multi-user. Default: $COCALC_MODE or single-user."],
        ["log-format", None, "text", "Log format: text or json (JSON lines)."],
        ["log-level", None, "info", "Lowest level logged: debug, info, warn, error."],
        ["shutdown-grace", None, None, "Seconds busy connections get to finish on shutdown (default 10)."],
        ["database", None, None, "sqlite (default: DATA/hub.db), sqlite:PATH, or postgresql://user@host/db. "
                                 "PGHOST/PGDATABASE in the environment select PostgreSQL too."],
        ["database-wait", None, None, "Seconds to retry an unreachable database at start-up (default 30)."],
        ["project-start-timeout", None, None, "Seconds a project gets to report ready (default 30)."],
        ["project-stop-grace", None, None, "Seconds between SIGTERM and SIGKILL when stopping (default 5)."],
        ["idle-timeout", None, None, "Default seconds without activity before a project is stopped "
                                     "(default 1800; 0 = never; per-project setting idle_timeout wins)."],
        ["idle-check-interval", None, None, "Seconds between idle checks (default 60; 0 = off)."],
        ["min-run-time", None, None, "Idle stop never stops a project younger than this (default 600)."],
        ["project-memory", None, None, "Address-space limit per project process, in MB (rlimit)."],
        ["project-processes", None, None, "Process limit per project uid (multi-user mode; rlimit)."],
        ["project-cpu", None, None, "CPU seconds per project process (rlimit)."],
        ["proxy-timeout", None, None, "Seconds a project's server may stay silent before the proxy answers 504 "
                                      "(default 120; 0 = never)."],
        ["conat-max-connections", None, None, "Conat connections this broker accepts (default 10000)."],
        ["conat-max-connections-per-user", None, None, "Conat connections per account, project or hub "
                                                       "(default 100)."],
        ["conat-max-subscriptions-per-client", None, None, "Conat subscriptions one client connection may hold "
                                                           "(default 500; more are refused with 429)."],
        ["conat-max-subscriptions-per-hub", None, None, "Conat subscriptions one hub connection (a hub's own "
                                                        "services, signed in as the hub) may hold (default 15000)."],
        ["conat-allowed-origins", None, None, "Origins (https://host[:port], comma-separated) besides the hub's "
                                              "own whose pages may open a conat WebSocket with a browser's "
                                              "session cookie. Env: COCALC_CONAT_ALLOWED_ORIGINS."],
        ["persist-storage", None, None, "Where persist streams live: sqlite (default; a file per stream under "
                                        "COCALC_SYNC or DATA/sync), memory, postgres (the hub's database) or a "
                                        "postgresql:// URL. Env: COCALC_PERSIST_STORAGE."],
        ["persist-id", None, None, "This persist server's id, 0 … CONAT_PERSIST_COUNT-1 (default 0)."],
        ["persist-count", None, None, "How many persist servers share the load (default 1; env "
                                      "CONAT_PERSIST_COUNT)."],
    ]
    optFlags = [
        ["all", None, "Run every part (the default when no part is selected)."],
        ["conat-server", None, "Run the conat broker (WebSocket at BASE_PATH/conat/)."],
        ["conat-api", None, "Serve the hub API over conat (hub.*.*.api), on the broker in this process "
                            "or the one CONAT_SERVER names."],
        ["conat-persist", None, "Run a conat persist server (streams and key-value stores on persist.*)."],
        ["proxy-server", None, "Run the HTTP server: web pages, JSON API and the project proxy."],
        ["trust-proxy", None, "Believe X-Forwarded-For/-Proto from the peer (only behind your own proxy)."],
        ["multi-user", None, "Same as --mode=multi-user."],
        ["stop-projects-on-exit", None, "Stop running projects when the hub stops (default: they keep running "
                                        "and the next hub adopts them)."],
        ["no-adopt-projects", None, "At start, stop projects left running by a previous hub instead of adopting."],
        ["allow-root-projects", None, "Single-user mode with the hub running as root: run projects as root "
                                      "(refused without this flag)."],
        ["version", None, "Print the version and exit."],
    ]

    def opt_version(self) -> None:
        print(f"cocalc-hub {__version__}")
        sys.exit(0)

    def _upstream_alias(self, name: str) -> None:
        self["conat-server"] = 1
        print(f"cocalc-hub: --{name} is upstream's name for --conat-server; running the conat broker",
              file=sys.stderr)

    def opt_conat_router(self) -> None:
        """Upstream's name for --conat-server."""
        self._upstream_alias("conat-router")

    def opt_conat_core(self) -> None:
        """Upstream's earlier name for --conat-server."""
        self._upstream_alias("conat-core")

    def parseOptions(self, options: list[str] | None = None) -> None:
        """A mistyped option ends the process with one line naming it (and the closest
        option), not with twistd's whole help text."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"cocalc-hub: {usage_hint(str(e), self.long_names())}") from None

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r} (options start with --)")

    def long_names(self) -> list[str]:
        names = [str(p[0]) for p in self.optParameters] + [str(f[0]) for f in self.optFlags]
        names += [n[4:].replace("_", "-") for n in dir(self) if n.startswith("opt_")]
        return sorted(set(names) | {"help"})


def usage_hint(message: str, names: list[str]) -> str:
    """getopt's "option --prot not recognized" → "unknown option --prot (did you mean --port?) …"."""
    import difflib
    import re

    m = re.fullmatch(r"option -{1,2}(\S+?) not recognized", message)
    if m is None:
        return f"{message} (cocalc-hub --help lists the options)"
    given = m.group(1).split("=", 1)[0]
    close = difflib.get_close_matches(given, names, n=1, cutoff=0.6)
    hint = f"did you mean --{close[0]}? " if close else ""
    return f"unknown option --{given} ({hint}cocalc-hub --help lists the options)"
