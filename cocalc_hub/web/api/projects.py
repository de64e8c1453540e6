"""Projects: create, list, get, update, delete, collaborators."""

from __future__ import annotations

from typing import Any

from cocalc_hub.projects.operations import project_id_param
from cocalc_hub.web.api import Ctx, endpoint, safe_next


@endpoint("v2/projects/create")
async def create(ctx: Ctx) -> dict[str, Any]:
    project = await ctx.services.projects.create(ctx.caller, title=ctx.params.get("title"),
                                                 description=ctx.params.get("description"),
                                                 project_id=ctx.params.get("project_id"))
    ctx.status = 201
    return {"project_id": project.project_id}


@endpoint("v2/projects/get", read_only=True)
async def get(ctx: Ctx) -> list[Any]:
    """The caller's projects (upstream), or the one named by ``project_id``."""
    projects = ctx.services.projects
    if ctx.params.get("project_id") is not None:
        return [(await projects.get(ctx.caller, project_id_param(ctx.params["project_id"]))).public()]
    include_deleted = ctx.params.get("include_deleted") in (True, "true", "1")
    return [p.public() for p in await projects.list_for(ctx.caller, include_deleted=include_deleted)]


@endpoint("v2/projects/update")
async def update(ctx: Ctx) -> dict[str, Any]:
    project = await ctx.services.projects.update(ctx.caller, project_id_param(ctx.params.get("project_id")),
                                                 title=ctx.params.get("title"),
                                                 description=ctx.params.get("description"))
    return {"status": "ok", "project": project.public()}


@endpoint("v2/projects/delete")
async def delete(ctx: Ctx) -> dict[str, Any]:
    await ctx.services.projects.delete(ctx.caller, project_id_param(ctx.params.get("project_id")))
    return {"status": "ok"}


@endpoint("v2/projects/collaborators/add")
async def add_collaborator(ctx: Ctx) -> dict[str, Any]:
    email = ctx.params.get("email_address", ctx.params.get("email"))
    added = await ctx.services.projects.add_collaborator(
        ctx.caller, project_id_param(ctx.params.get("project_id")), account_id=ctx.params.get("account_id"),
        email_address=email)
    return {"status": "ok", "account_id": added}


@endpoint("v2/projects/collaborators/remove")
async def remove_collaborator(ctx: Ctx) -> dict[str, Any]:
    await ctx.services.projects.remove_collaborator(ctx.caller, project_id_param(ctx.params.get("project_id")),
                                                    ctx.params.get("account_id"))
    return {"status": "ok"}


@endpoint("v2/projects/collaborators/list", read_only=True)
async def list_collaborators(ctx: Ctx) -> list[Any]:
    return await ctx.services.projects.collaborators(ctx.caller, project_id_param(ctx.params.get("project_id")))


@endpoint("v2/projects/start")
async def start(ctx: Ctx) -> dict[str, Any]:
    """With ``next`` (the proxy's "start the project" form), answers 303 back to that page."""
    state = await ctx.services.projects.start(ctx.caller, project_id_param(ctx.params.get("project_id")))
    if "next" in ctx.params:
        ctx.redirect = safe_next(ctx.params["next"], ctx.services.base_path)
    return {"status": "ok", "state": state}


@endpoint("v2/projects/stop")
async def stop(ctx: Ctx) -> dict[str, Any]:
    return {"status": "ok", "state": await ctx.services.projects.stop(
        ctx.caller, project_id_param(ctx.params.get("project_id")))}


@endpoint("v2/projects/restart")
async def restart(ctx: Ctx) -> dict[str, Any]:
    return {"status": "ok", "state": await ctx.services.projects.restart(
        ctx.caller, project_id_param(ctx.params.get("project_id")))}


@endpoint("v2/projects/state", read_only=True)
async def state(ctx: Ctx) -> dict[str, Any]:
    return await ctx.services.projects.state(ctx.caller, project_id_param(ctx.params.get("project_id")))


@endpoint("v2/projects/touch")
async def touch(ctx: Ctx) -> dict[str, Any]:
    await ctx.services.projects.touch(ctx.caller, project_id_param(ctx.params.get("project_id")))
    return {"status": "ok"}


EXEC_PARAMS = ("command", "args", "path", "timeout", "max_output", "bash", "err_on_exit", "env", "async_call",
               "async_get", "async_await", "async_stats")


@endpoint("v2/exec")
async def exec_(ctx: Ctx) -> Any:
    """Upstream's exec: run a command in the project (project_id, command, args, path, timeout,
    max_output, bash, err_on_exit, env, async_call, async_get, async_await)."""
    project_id = project_id_param(ctx.params.get("project_id"))
    params = {k: ctx.params[k] for k in EXEC_PARAMS if k in ctx.params}
    status, body = await ctx.services.projects.exec(ctx.caller, project_id, params)
    ctx.status = status
    return body
