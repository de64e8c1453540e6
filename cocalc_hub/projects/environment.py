"""The environment a project program gets: built from a whitelist, never the hub's own.

No secret is in it: the project's token comes on a pipe (``COCALC_TOKEN_FD``).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Taken from the hub's environment when present; everything else is left behind
# (database passwords, cloud credentials, the hub's own settings…).
PASSED_THROUGH = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def project_environment(*, project_id: str, home: Path, base_path: str, hub_url: str,
                        uid: int | None, limits: Mapping[str, int], extra: Mapping[str, Any] | None,
                        ready_fd: int, token_fd: int, source: Mapping[str, str] | None = None) -> dict[str, str]:
    source = os.environ if source is None else source
    user = project_id.replace("-", "")
    env = {k: source[k] for k in PASSED_THROUGH if k in source}
    env.setdefault("LANG", "C.UTF-8")
    env.update({
        "HOME": str(home),
        "PATH": f"{home}/bin:{home}/.local/bin:{DEFAULT_PATH}",
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash",
        "COCALC_PROJECT_ID": project_id,
        "COCALC_USERNAME": user,
        "COCALC_READY_FD": str(ready_fd),
        "COCALC_TOKEN_FD": str(token_fd),
        "BASE_PATH": base_path,
        "DATA": str(home / ".smc"),
        "PYTHONUNBUFFERED": "1",
    })
    if hub_url:
        env["COCALC_HUB_URL"] = hub_url
        env["CONAT_SERVER"] = hub_url
    if uid is not None:
        env["COCALC_PROJECT_UID"] = str(uid)
        env["COCALC_PROJECT_GID"] = str(uid)
    if limits:
        env["COCALC_PROJECT_LIMITS"] = json.dumps(dict(limits))
    if extra:
        # Upstream's projects.env: extra variables for the project, never overriding ours
        # (nor setting any COCALC_* variable, ours or not).
        env["COCALC_EXTRA_ENV"] = base64.b64encode(json.dumps(dict(extra)).encode()).decode()
        for key, value in extra.items():
            if isinstance(key, str) and isinstance(value, str) and key not in env and key.isidentifier() \
                    and not key.startswith("COCALC_"):
                env[key] = value
    return env
