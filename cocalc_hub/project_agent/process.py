"""Process set-up the project program does for itself before anything else runs.

The hub cannot run code in the child between fork and exec (Twisted offers no
preexec hook), so the project program, started as the hub's child, makes itself a
session leader (the hub signals the whole group), drops to the project's uid/gid in
multi-user mode (clearing supplementary groups), applies resource limits as hard
limits, and becomes a child subreaper so processes that daemonize stay its
descendants.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
from collections.abc import Mapping

PR_SET_CHILD_SUBREAPER = 36

LIMITS = {
    "memory": resource.RLIMIT_AS,        # bytes of address space per process
    "processes": resource.RLIMIT_NPROC,  # processes of the uid (meaningful in multi-user mode)
    "cpu": resource.RLIMIT_CPU,          # CPU seconds per process
    "file_size": resource.RLIMIT_FSIZE,  # bytes per file written
    "open_files": resource.RLIMIT_NOFILE,
}


class SetupError(Exception):
    pass


def parse_limits(raw: str | None) -> dict[str, int]:
    """``{"memory": bytes, "processes": n, "cpu": seconds, ...}`` from the environment."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise SetupError(f"COCALC_PROJECT_LIMITS is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise SetupError("COCALC_PROJECT_LIMITS must be a JSON object")
    out = {}
    for name, value in data.items():
        if name not in LIMITS:
            raise SetupError(f"unknown resource limit {name!r}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise SetupError(f"resource limit {name} must be a positive integer")
        out[name] = value
    return out


def apply_limits(limits: Mapping[str, int]) -> None:
    for name, value in limits.items():
        which = LIMITS[name]
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY and value > hard:
            value = hard
        resource.setrlimit(which, (value, value))


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid/gid with no supplementary groups (only possible as root)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise SetupError("could not drop privileges")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SetupError("privileges were not dropped permanently")


def warm_up() -> None:
    """Import now, as root, what the program loads lazily later.

    In multi-user mode the Python installation may not be readable by the project's uid
    (e.g. a pyenv under /root); modules already imported keep working after the drop.
    """
    import email.message
    import email.policy  # noqa: F401  (Twisted parses Content-Type with it)
    import encodings.idna  # noqa: F401
    import encodings.latin_1  # noqa: F401
    import html  # noqa: F401
    import mimetypes
    import shutil  # noqa: F401
    import tempfile  # noqa: F401
    import uuid  # noqa: F401
    from urllib.parse import quote  # noqa: F401

    import twisted.internet.endpoints  # noqa: F401
    import twisted.web.server  # noqa: F401
    from twisted.internet import reactor  # noqa: F401

    import cocalc_hub.conat.client  # noqa: F401
    import cocalc_hub.project_agent.api  # noqa: F401
    import cocalc_hub.project_agent.conat_link  # noqa: F401
    import cocalc_hub.project_agent.jobs  # noqa: F401
    import cocalc_hub.project_agent.main  # noqa: F401
    import cocalc_hub.project_agent.raw  # noqa: F401
    import cocalc_hub.project_agent.records  # noqa: F401

    email.message.EmailMessage()["content-type"] = "application/json; charset=utf-8"
    mimetypes.init()


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def prepare(env: Mapping[str, str]) -> None:
    """Session, privileges, limits, subreaper: in that order (limits set as root stick)."""
    try:
        os.setsid()
    except PermissionError:
        pass  # already a session leader (started by a test harness, say)
    limits = parse_limits(env.get("COCALC_PROJECT_LIMITS"))
    uid_raw, gid_raw = env.get("COCALC_PROJECT_UID"), env.get("COCALC_PROJECT_GID")
    if uid_raw:
        if os.geteuid() != 0:
            raise SetupError("COCALC_PROJECT_UID is set but the project program is not started as root")
        warm_up()
        apply_limits(limits)
        drop_privileges(int(uid_raw), int(gid_raw or uid_raw))
    else:
        apply_limits(limits)
    become_subreaper()
    os.umask(0o022)
