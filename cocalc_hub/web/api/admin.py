"""Administration: accounts, projects, server settings, registration tokens."""

from __future__ import annotations

import secrets
from typing import Any

from cocalc_hub.auth.accounts import AuthError
from cocalc_hub.db.store import Conflict
from cocalc_hub.projects.operations import account_id_param
from cocalc_hub.web.api import ApiError, Ctx, EndpointTable, Param

ENDPOINTS = EndpointTable()
"""This module's endpoints (listed in cocalc_hub.web.api.registry)."""
endpoint = ENDPOINTS.endpoint

EDITABLE_SETTINGS = ("email_signup", "samesite_remember_me", "signup_hides_emails", "site_name")
PAGE = (Param("limit", "integer", "At most this many (1-1000, default 100)."),
        Param("offset", "integer", "Skip this many (default 0)."))
ACCOUNT_ID = Param("account_id", description="The account's id.", required=True, format="uuid")


def _page(ctx: Ctx) -> tuple[int, int]:
    try:
        limit = int(ctx.params.get("limit", 100))
        offset = int(ctx.params.get("offset", 0))
    except (TypeError, ValueError):
        raise ApiError(400, "limit and offset must be integers") from None
    if not 1 <= limit <= 1000 or offset < 0:
        raise ApiError(400, "limit must be 1..1000 and offset non-negative")
    return limit, offset


@endpoint("v2/admin/accounts", read_only=True, errors=(403,), summary="Every account (administrators).",
          params=PAGE)
async def accounts(ctx: Ctx) -> list[Any]:
    await ctx.services.accounts.require_admin(ctx.caller)
    limit, offset = _page(ctx)
    return [a.public() for a in await ctx.services.accounts.store.list_accounts(limit=limit, offset=offset)]


@endpoint("v2/admin/projects", read_only=True, errors=(403,), summary="Every project (administrators).",
          params=PAGE)
async def projects(ctx: Ctx) -> list[Any]:
    await ctx.services.accounts.require_admin(ctx.caller)
    limit, offset = _page(ctx)
    return [p.public() for p in await ctx.services.accounts.store.list_all_projects(limit=limit, offset=offset)]


@endpoint("v2/admin/set-admin", errors=(404,), summary="Make an account an administrator, or not.",
          params=(ACCOUNT_ID, Param("admin", "boolean", "True to grant, false to revoke.")))
async def set_admin(ctx: Ctx) -> dict[str, Any]:
    me = await ctx.services.accounts.require_admin(ctx.caller)
    target_id = account_id_param(ctx.params.get("account_id"))
    make_admin = ctx.params.get("admin") in (True, "true", "1", 1)
    store = ctx.services.accounts.store
    target = await store.get_account(target_id)
    if target is None:
        raise AuthError(404, "no such account")
    if target_id == me.account_id and not make_admin:
        raise AuthError(400, "you cannot remove your own admin rights")
    groups = tuple(g for g in target.groups if g != "admin") + (("admin",) if make_admin else ())
    await store.set_groups(target_id, groups)
    ctx.services.auth.forget_account(target_id)
    return {"status": "ok", "is_admin": make_admin}


@endpoint("v2/admin/ban", errors=(404,), summary="Ban an account (its sessions end) or lift the ban.",
          params=(ACCOUNT_ID, Param("banned", "boolean", "False lifts the ban (default true).")))
async def ban(ctx: Ctx) -> dict[str, Any]:
    me = await ctx.services.accounts.require_admin(ctx.caller)
    target_id = account_id_param(ctx.params.get("account_id"))
    banned = ctx.params.get("banned", True) in (True, "true", "1", 1)
    if target_id == me.account_id:
        raise AuthError(400, "you cannot ban yourself")
    store = ctx.services.accounts.store
    if await store.get_account(target_id) is None:
        raise AuthError(404, "no such account")
    await store.set_banned(target_id, banned)
    if banned:
        await store.delete_sessions(target_id)
    ctx.services.auth.forget_account(target_id)
    return {"status": "ok", "banned": banned}


@endpoint("v2/admin/settings", read_only=True, errors=(403,),
          summary="Server settings, the sign-up mode and the registration tokens (administrators).")
async def settings(ctx: Ctx) -> dict[str, Any]:
    await ctx.services.accounts.require_admin(ctx.caller)
    values = await ctx.services.accounts.settings.all()
    return {"settings": values, "editable": list(EDITABLE_SETTINGS),
            "signup": await ctx.services.accounts.signup_mode(),
            "registration_tokens": await ctx.services.accounts.store.list_registration_tokens()}


@endpoint("v2/admin/set-setting", summary="Change a server setting (administrators).", params=(
    Param("name", required=True, enum=EDITABLE_SETTINGS), Param("value", description="Empty: the default.")))
async def set_setting(ctx: Ctx) -> dict[str, Any]:
    await ctx.services.accounts.require_admin(ctx.caller)
    name = ctx.param("name", required=True, kind=str)
    value = ctx.param("value", kind=str)
    if name not in EDITABLE_SETTINGS:
        raise ApiError(400, f"setting must be one of {', '.join(EDITABLE_SETTINGS)}")
    if value is not None and len(value) > 4096:
        raise ApiError(400, "value is too long")
    await ctx.services.accounts.settings.set(name, value)
    return {"status": "ok"}


@endpoint("v2/admin/create-registration-token", success=(201,), errors=(409,),
          summary="Create a registration token (administrators); sign-up then needs one.", params=(
              Param("token", description="The token (default: random)."), Param("descr", description="A note."),
              Param("limit", "integer", "How many sign-ups it allows (default: no limit).")))
async def create_token(ctx: Ctx) -> dict[str, Any]:
    await ctx.services.accounts.require_admin(ctx.caller)
    token = ctx.param("token", kind=str) or secrets.token_urlsafe(12)
    limit = ctx.params.get("limit")
    if limit is not None:
        try:
            limit = int(limit)
        except (TypeError, ValueError):
            raise ApiError(400, "limit must be an integer") from None
    if len(token) > 128 or not token.isprintable():
        raise ApiError(400, "token must be printable and at most 128 characters")
    try:
        await ctx.services.accounts.store.create_registration_token(
            token, descr=ctx.param("descr", kind=str) or "", limit=limit)
    except Conflict:
        raise ApiError(409, "that token already exists") from None
    ctx.status = 201
    return {"token": token}
