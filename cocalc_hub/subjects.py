"""Conat subjects of a project, in upstream's naming scheme (``conat/names.ts``).

``project.<project_id>.<compute_server_id|->.<service|->.<base64 path|->``; the project
itself is compute server 0. The broker lets the project and every owner/collaborator
publish and subscribe under ``project.<project_id>.`` and nobody else (spec §5.4), so
these subjects need no checks of their own.

Shared by the hub (:mod:`cocalc_hub.projects.publish`) and the project program
(:mod:`cocalc_hub.project_agent`), so that neither imports the other; it imports nothing
of either.
"""

from __future__ import annotations

import base64

API_SERVICE = "api"
STATE_SERVICE = "state"


def project_subject(project_id: str, service: str | None, *, compute_server_id: int | None = 0,
                    path: str | None = None) -> str:
    """``projectSubject`` of upstream's names.ts."""
    if not project_id:
        raise ValueError("project_id must be set")
    encoded = base64.b64encode(path.encode()).decode() if path else "-"
    return ".".join(["project", project_id, "-" if compute_server_id is None else str(compute_server_id),
                     service or "-", encoded])


def api_subject(project_id: str) -> str:
    """Where the project program answers its API: ``project.<id>.0.api.-``."""
    return project_subject(project_id, API_SERVICE)


def state_subject(project_id: str) -> str:
    """Where the hub and the project publish state events: ``project.<id>.0.state.-``."""
    return project_subject(project_id, STATE_SERVICE)
