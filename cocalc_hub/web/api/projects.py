"""Projects: create, list, get, update, delete, collaborators."""

from __future__ import annotations

from typing import Any

from cocalc_hub.db.store import Project
from cocalc_hub.projects.operations import project_id_param
from cocalc_hub.web.api import PROJECT_ID, Ctx, EndpointTable, Param, safe_next

ENDPOINTS = EndpointTable()
"""This module's endpoints (listed in cocalc_hub.web.api.registry)."""
endpoint = ENDPOINTS.endpoint

TITLE = Param("title", description="At most 1024 characters.")
DESCRIPTION = Param("description")
MEMBERS = (403, 404)
"""A project's endpoints answer 403 to non-members and 404 for unknown projects."""


@endpoint("v2/projects/create", success=(201,), errors=(409, 429), summary="Create a project owned by the caller.",
          params=(TITLE, DESCRIPTION, Param("project_id", description="Its id (administrators only).", format="uuid")))
async def create(ctx: Ctx) -> dict[str, Any]:
    project = await ctx.services.projects.create(ctx.caller, title=ctx.params.get("title"),
                                                 description=ctx.params.get("description"),
                                                 project_id=ctx.params.get("project_id"))
    ctx.status = 201
    return {"project_id": project.project_id}


def _as_seen(project: Project, account_id: str | None) -> dict[str, Any]:
    """The project with ``group``: the caller's own role in it (owner, collaborator; None
    for an administrator who is not a member), so a list can mark projects shared with them."""
    return {**project.public(), "group": project.group_of(account_id) if account_id else None}


@endpoint("v2/projects/get", read_only=True, errors=MEMBERS, summary=(
    "The caller's projects, or the one named by project_id; group is the caller's own role."), params=(
    Param("project_id", description="Only this project.", format="uuid"),
    Param("include_deleted", "boolean", "Include deleted projects.")))
async def get(ctx: Ctx) -> list[Any]:
    """The caller's projects (upstream), or the one named by ``project_id``."""
    projects = ctx.services.projects
    me = ctx.caller.account_id
    if ctx.params.get("project_id") is not None:
        return [_as_seen(await projects.get(ctx.caller, project_id_param(ctx.params["project_id"])), me)]
    include_deleted = ctx.params.get("include_deleted") in (True, "true", "1")
    return [_as_seen(p, me) for p in await projects.list_for(ctx.caller, include_deleted=include_deleted)]


@endpoint("v2/projects/update", errors=MEMBERS, summary="Change a project's title or description.",
          params=(PROJECT_ID, TITLE, DESCRIPTION))
async def update(ctx: Ctx) -> dict[str, Any]:
    project = await ctx.services.projects.update(ctx.caller, project_id_param(ctx.params.get("project_id")),
                                                 title=ctx.params.get("title"),
                                                 description=ctx.params.get("description"))
    return {"status": "ok", "project": project.public()}


@endpoint("v2/projects/delete", errors=MEMBERS, summary="Delete a project (its owner or an administrator).",
          params=(PROJECT_ID,))
async def delete(ctx: Ctx) -> dict[str, Any]:
    await ctx.services.projects.delete(ctx.caller, project_id_param(ctx.params.get("project_id")))
    return {"status": "ok"}


@endpoint("v2/projects/collaborators/add", errors=MEMBERS, summary="Add a collaborator by account id or email.",
          params=(PROJECT_ID, Param("account_id", format="uuid"),
                  Param("email", description="Also email_address.", format="email")))
async def add_collaborator(ctx: Ctx) -> dict[str, Any]:
    email = ctx.params.get("email_address", ctx.params.get("email"))
    added = await ctx.services.projects.add_collaborator(
        ctx.caller, project_id_param(ctx.params.get("project_id")), account_id=ctx.params.get("account_id"),
        email_address=email)
    return {"status": "ok", "account_id": added}


@endpoint("v2/projects/collaborators/remove", errors=MEMBERS, summary="Remove a collaborator.",
          params=(PROJECT_ID, Param("account_id", required=True, format="uuid")))
async def remove_collaborator(ctx: Ctx) -> dict[str, Any]:
    await ctx.services.projects.remove_collaborator(ctx.caller, project_id_param(ctx.params.get("project_id")),
                                                    ctx.params.get("account_id"))
    return {"status": "ok"}


@endpoint("v2/projects/collaborators/list", read_only=True, errors=MEMBERS,
          summary="A project's owner and collaborators.", params=(PROJECT_ID,))
async def list_collaborators(ctx: Ctx) -> list[Any]:
    return await ctx.services.projects.collaborators(ctx.caller, project_id_param(ctx.params.get("project_id")))


@endpoint("v2/projects/start", success=(200, 303), errors=MEMBERS, summary="Start a project.", params=(
    PROJECT_ID, Param("next", description="A path on this site to send a browser to (303) once started.")))
async def start(ctx: Ctx) -> dict[str, Any]:
    """With ``next`` (the proxy's "start the project" form), answers 303 back to that page."""
    state = await ctx.services.projects.start(ctx.caller, project_id_param(ctx.params.get("project_id")))
    if "next" in ctx.params:
        ctx.redirect = safe_next(ctx.params["next"], ctx.services.base_path)
    return {"status": "ok", "state": state}


@endpoint("v2/projects/stop", errors=MEMBERS, summary="Stop a project.", params=(PROJECT_ID,))
async def stop(ctx: Ctx) -> dict[str, Any]:
    return {"status": "ok", "state": await ctx.services.projects.stop(
        ctx.caller, project_id_param(ctx.params.get("project_id")))}


@endpoint("v2/projects/restart", errors=MEMBERS, summary="Restart a project.", params=(PROJECT_ID,))
async def restart(ctx: Ctx) -> dict[str, Any]:
    return {"status": "ok", "state": await ctx.services.projects.restart(
        ctx.caller, project_id_param(ctx.params.get("project_id")))}


@endpoint("v2/projects/state", read_only=True, errors=MEMBERS, summary="A project's state.", params=(PROJECT_ID,))
async def state(ctx: Ctx) -> dict[str, Any]:
    return await ctx.services.projects.state(ctx.caller, project_id_param(ctx.params.get("project_id")))


@endpoint("v2/projects/touch", errors=MEMBERS, summary="Mark a project as in use (it is not stopped as idle).",
          params=(PROJECT_ID,))
async def touch(ctx: Ctx) -> dict[str, Any]:
    await ctx.services.projects.touch(ctx.caller, project_id_param(ctx.params.get("project_id")))
    return {"status": "ok"}


EXEC_PARAMS = ("command", "args", "path", "timeout", "max_output", "bash", "err_on_exit", "env", "async_call",
               "async_get", "async_await", "async_stats")


@endpoint("v2/exec", errors=(*MEMBERS, 422, 504), summary="Run a command in a project (started if needed).", params=(
    PROJECT_ID, Param("command", description="The program, or with bash a shell script."),
    Param("args", "array", "Its arguments."), Param("path", description="The directory, relative to HOME."),
    Param("env", "object", "More environment variables."),
    Param("timeout", "number", "Seconds (synchronous calls); with async_get, how long to wait."),
    Param("max_output", "integer", "Bytes of output kept."), Param("bash", "boolean", "Run command with bash."),
    Param("err_on_exit", "boolean", "Answer 422 if the exit code is not 0."),
    Param("async_call", "boolean", "Start it in the background and answer at once with a job_id."),
    Param("async_get", description="A job_id: report that job."),
    Param("async_await", "boolean", "With async_get: wait until the job ends (or timeout).")))
async def exec_(ctx: Ctx) -> Any:
    """Upstream's exec: run a command in the project (project_id, command, args, path, timeout,
    max_output, bash, err_on_exit, env, async_call, async_get, async_await)."""
    project_id = project_id_param(ctx.params.get("project_id"))
    params = {k: ctx.params[k] for k in EXEC_PARAMS if k in ctx.params}
    status, body = await ctx.services.projects.exec(ctx.caller, project_id, params)
    ctx.status = status
    return body
