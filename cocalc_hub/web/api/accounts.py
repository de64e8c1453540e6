"""Sign-up, sign-in, sign-out, account info, password change and API keys."""

from __future__ import annotations

from typing import Any

from cocalc_hub.auth.accounts import AuthError
from cocalc_hub.projects.operations import project_id_param
from cocalc_hub.web.api import ApiError, Ctx, EndpointTable, Param, clear_session_cookies, session_cookies

ENDPOINTS = EndpointTable()
"""This module's endpoints (listed in cocalc_hub.web.api.registry)."""
endpoint = ENDPOINTS.endpoint

EMAIL = Param("email", description="The email address (also accepted as email_address).", required=True,
              format="email")
PASSWORD = Param("password", required=True, format="password")


def _first(ctx: Ctx, *names: str) -> Any:
    """Upstream uses camelCase; accept snake_case too."""
    for name in names:
        if ctx.params.get(name) is not None:
            return ctx.params[name]
    return None


async def _start(ctx: Ctx, sign_in: Any) -> dict[str, Any]:
    same_site = (await ctx.services.accounts.settings.get("samesite_remember_me") or "strict").lower()
    if same_site not in ("strict", "lax", "none"):
        same_site = "strict"
    if same_site == "none" and not ctx.secure:
        same_site = "lax"  # browsers reject SameSite=None without Secure
    session_cookies(ctx, sign_in.session.cookie_value, sign_in.account.account_id, sign_in.expire, same_site)
    return {"account_id": sign_in.account.account_id, "is_admin": sign_in.account.is_admin}


HIDDEN_SIGNUP = ("If no account had this email address, one was made with this password: sign in with them. "
                 "If you already had an account, sign in with its password.")


@endpoint("v2/auth/sign-up", anonymous=True, success=(201, 202), errors=(409, 429), summary=(
    "Create an account and sign it in (sets the session cookies). While the signup_hides_emails "
    "setting is on (the default) the answer is 202 whether or not the email had an account, and "
    "nobody is signed in: sign in next."), params=(
    EMAIL, Param("password", description="At least 8 characters.", required=True, format="password"),
    Param("firstName", description="Also first_name."), Param("lastName", description="Also last_name."),
    Param("registrationToken", description="Needed while registration tokens exist (also registration_token).")))
async def sign_up(ctx: Ctx) -> dict[str, Any]:
    accounts = ctx.services.accounts
    account = await accounts.sign_up(
        email=_first(ctx, "email", "email_address"), password=ctx.params.get("password"),
        first_name=_first(ctx, "firstName", "first_name"), last_name=_first(ctx, "lastName", "last_name"),
        registration_token=_first(ctx, "registrationToken", "registration_token"), client_ip=ctx.client_ip)
    if account is None:
        ctx.status = 202
        return {"status": "accepted", "message": HIDDEN_SIGNUP}
    ctx.status = 201
    return await _start(ctx, await accounts.start_session(account))


@endpoint("v2/auth/sign-in", anonymous=True, errors=(401, 429),
          summary="Sign in with email and password (sets the session cookies).", params=(EMAIL, PASSWORD))
async def sign_in(ctx: Ctx) -> dict[str, Any]:
    result = await ctx.services.accounts.sign_in(email=_first(ctx, "email", "email_address"),
                                                 password=ctx.params.get("password"), client_ip=ctx.client_ip)
    return await _start(ctx, result)


@endpoint("v2/auth/setup-admin", anonymous=True, errors=(401, 403, 409, 429), params=(
    Param("token", description="The one-time token of the first-admin setup link (after #token=).", required=True),
    Param("check", type="boolean", description="Only validate the token; answers {valid, signed_in}."),
    Param("email", description="Signed out: the administrator account to create, or an existing one to promote "
                               "(with its password). Signed in without email: the caller is promoted.",
          format="email"),
    Param("password", format="password"), Param("firstName"), Param("lastName")))
async def setup_admin(ctx: Ctx) -> dict[str, Any]:
    """The first administrator, with the one-time link the hub logs while there is none.

    Only while no administrator exists; the token works once, for 60 minutes."""
    setup = ctx.services.admin_setup
    if setup is None:
        raise ApiError(503, "this hub process does not serve the first-admin setup")
    signed_in = ctx.caller.is_account and not ctx.caller.error
    if ctx.params.get("check") in (True, "true", "1", 1):
        await setup.check(ctx.params.get("token"), ctx.client_ip)
        return {"valid": True, "signed_in": signed_in}
    session = await setup.claim(
        ctx.params.get("token"), ctx.caller, email=_first(ctx, "email", "email_address"),
        password=ctx.params.get("password"), first_name=_first(ctx, "firstName", "first_name"),
        last_name=_first(ctx, "lastName", "last_name"), client_ip=ctx.client_ip)
    if session is None:
        return {"account_id": ctx.caller.account_id, "is_admin": True}
    return await _start(ctx, session)


@endpoint("v2/auth/requires-token", read_only=True, anonymous=True,
          summary="Whether sign-up is open, closed or needs a registration token.")
async def requires_token(ctx: Ctx) -> dict[str, Any]:
    mode = await ctx.services.accounts.signup_mode()
    return {"requiresToken": mode == "token", "signup": mode}


@endpoint("v2/auth/csrf", read_only=True, summary="The session's CSRF token, for the X-CSRF-Token header.")
async def csrf(ctx: Ctx) -> dict[str, Any]:
    names = ctx.services.names
    value = ctx.cookies.get(names.remember_me) if ctx.caller.via == "remember_me" else None
    return {"token": ctx.services.csrf.token(value) if value else None}


@endpoint("v2/accounts/sign-out", summary="Sign out this session (or, with all, every session).",
          params=(Param("all", "boolean", "Sign out every session of the account."),))
async def sign_out(ctx: Ctx) -> dict[str, Any]:
    everywhere = ctx.params.get("all") in (True, "true", "1", 1)
    revoked = await ctx.services.accounts.sign_out(ctx.caller, everywhere=everywhere)
    clear_session_cookies(ctx)
    return {"status": "success", "revoked": revoked}


@endpoint("v2/accounts/profile", read_only=True, summary="The caller's account (or, for a project key, its project).")
async def profile(ctx: Ctx) -> dict[str, Any]:
    caller = ctx.caller
    if caller.kind == "project":
        return {"project_id": caller.project_id, "via": caller.via}
    account = await ctx.services.accounts.require_account(caller)
    return {**account.public(), "via": caller.via}


@endpoint("v2/accounts/set-password",
          summary="Change the password; every other session is signed out.", params=(
              Param("currentPassword", description="Also current_password.", required=True, format="password"),
              Param("newPassword", description="At least 8 characters (also new_password).", required=True,
                    format="password")))
async def set_password(ctx: Ctx) -> dict[str, Any]:
    revoked = await ctx.services.accounts.change_password(
        ctx.caller, _first(ctx, "currentPassword", "current_password"), _first(ctx, "newPassword", "new_password"))
    return {"status": "success", "revoked_sessions": revoked}


def _key_id(ctx: Ctx) -> int:
    raw = ctx.params.get("id")
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ApiError(400, "parameter 'id' must be an integer") from None
    if not 0 < value <= 2147483647:
        raise ApiError(404, "no such API key")
    return value


@endpoint("v2/api-keys", success=(200, 201), errors=(404, 429),
          summary="The caller's API keys: get, create, delete or edit.", params=(
    Param("action", description="What to do (default get).", enum=("get", "create", "delete", "edit")),
    Param("id", "integer", "The key's id (delete, edit)."),
    Param("name", description="The key's name (create, edit)."),
    Param("expire", description="When the key expires (create, edit; empty: never).", format="date-time"),
    Param("project_id", description="A key for this project only (create).", format="uuid")))
async def api_keys(ctx: Ctx) -> dict[str, Any]:
    """Upstream's one endpoint with an ``action``: get, create, delete or edit."""
    accounts = ctx.services.accounts
    action = ctx.params.get("action") or "get"
    if action == "get":
        keys = await accounts.list_api_keys(ctx.caller)
        return {"response": [k.public() for k in keys]}
    if action == "create":
        project_id = ctx.params.get("project_id")
        key, secret = await accounts.create_api_key(
            ctx.caller, name=ctx.params.get("name"), expire=ctx.params.get("expire"),
            project_id=project_id_param(project_id) if project_id else None)
        ctx.status = 201
        return {"response": {**key.public(), "secret": secret}}
    if action == "delete":
        await accounts.delete_api_key(ctx.caller, _key_id(ctx))
        return {"response": {"status": "deleted"}}
    if action == "edit":
        expire = ctx.params.get("expire")
        await accounts.edit_api_key(ctx.caller, _key_id(ctx), name=ctx.params.get("name"),
                                    expire=expire or None, clear_expire="expire" in ctx.params and not expire)
        return {"response": {"status": "updated"}}
    raise AuthError(400, "action must be one of get, create, delete, edit")
