"""``cocalc-hub-admin`` (or ``python -m cocalc_hub.admin``): administer the hub's database.

Works on the same store the daemon uses, chosen the same way (``--data``/``DATA``,
``--database``, ``PGHOST``…), so it can run while the hub is up.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.interfaces import IReactorTime

from cocalc_hub.admin_remote import HubUnreachable
from cocalc_hub.auth.accounts import AuthError, normalize_email
from cocalc_hub.auth.caller import Caller
from cocalc_hub.auth.passwords import password_problem
from cocalc_hub.auth.service import AuthParts
from cocalc_hub.db.store import Account, Store, is_uuid, normalize_uuid
from cocalc_hub.projects.operations import Projects
from cocalc_hub.settings import SettingsError, from_options

ADMIN = Caller(kind="system", via="admin-cli", is_admin=True)
PROJECT_SETTINGS = ("idle_timeout", "memory", "processes", "cpu", "file_size", "open_files")


HUB_HELP = ("the running hub, for start/stop/restart/state: http[s]://host:port[/base], unix:/path/to.sock or "
            "http+unix://%%2Fpath%%2Fto.sock[/base] (default http://127.0.0.1:$PORT$BASE_PATH)")


class CliError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cocalc-hub-admin", description=__doc__.splitlines()[0])
    p.add_argument("--data", help="data directory (default: $DATA or the hub's default)")
    p.add_argument("--database", help="sqlite, sqlite:PATH or postgresql://... (default as the hub)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--hub", help=HUB_HELP)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print results as JSON")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    real_add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return real_add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    # In the order ``--help`` lists them.
    _account_commands(sub)
    _project_and_listing_commands(sub)
    _key_and_setting_commands(sub)
    _running_hub_commands(sub)
    return p


def _account_commands(sub: Any) -> None:
    c = sub.add_parser("create-account", help="create an account")
    c.add_argument("email")
    c.add_argument("--password", help="default: a random one, printed")
    c.add_argument("--first-name", default="")
    c.add_argument("--last-name", default="")
    c.add_argument("--admin", action="store_true", help="make the account an administrator")

    c = sub.add_parser("make-admin", help="grant (or --revoke) administrator rights")
    c.add_argument("account", help="email address or account id")
    c.add_argument("--revoke", action="store_true")

    c = sub.add_parser("reset-password", help="set a new password and sign the account out everywhere")
    c.add_argument("account", help="email address or account id")
    c.add_argument("--password", help="default: a random one, printed")

    c = sub.add_parser("ban", help="ban (or --unban) an account; bans sign it out everywhere")
    c.add_argument("account")
    c.add_argument("--unban", action="store_true")


def _project_and_listing_commands(sub: Any) -> None:
    c = sub.add_parser("create-project", help="create a project owned by an account")
    c.add_argument("owner", help="email address or account id")
    c.add_argument("--title", default="")
    c.add_argument("--description", default="")

    c = sub.add_parser("add-collaborator", help="add an account to a project")
    c.add_argument("project_id")
    c.add_argument("account", help="email address or account id")

    c = sub.add_parser("remove-collaborator", help="remove an account from a project")
    c.add_argument("project_id")
    c.add_argument("account", help="email address or account id")

    c = sub.add_parser("list-accounts", help="list accounts")
    c.add_argument("--limit", type=int, default=1000)

    c = sub.add_parser("list-projects", help="list projects (all, or one account's)")
    c.add_argument("--account", help="only this account's projects")
    c.add_argument("--limit", type=int, default=1000)


def _key_and_setting_commands(sub: Any) -> None:
    c = sub.add_parser("create-api-key", help="create an API key for an account (printed once)")
    c.add_argument("account", help="email address or account id")
    c.add_argument("--name", default="")
    c.add_argument("--project", help="scope the key to this project")
    c.add_argument("--expire", help="ISO 8601 expiry time")

    c = sub.add_parser("create-registration-token", help="require this token to sign up")
    c.add_argument("--token", help="default: a random one")
    c.add_argument("--limit", type=int, help="how many sign-ups it allows")
    c.add_argument("--description", default="")

    c = sub.add_parser("set-setting", help="set a server setting (e.g. email_signup no)")
    c.add_argument("name")
    c.add_argument("value")

    c = sub.add_parser("set-project-settings", help="per-project settings, e.g. idle_timeout=0 memory=2000000000")
    c.add_argument("project_id")
    c.add_argument("values", nargs="+", metavar="NAME=INTEGER")


def _running_hub_commands(sub: Any) -> None:
    for name, what in (("start", "start"), ("stop", "stop"), ("restart", "restart"), ("state", "show the state of")):
        c = sub.add_parser(name, help=f"{what} a project (asks the running hub, which owns project processes)")
        c.add_argument("project_id")
        c.add_argument("--hub", default=argparse.SUPPRESS, help=HUB_HELP)

    c = sub.add_parser("setup-link", help="print a new one-time link that creates the first administrator")
    c.add_argument("--url", help="the hub's public URL for the link (default: --hub)")


class Admin:
    """The commands, on an opened store."""

    def __init__(self, parts: AuthParts, store: Store, projects: Projects, clock: IReactorTime) -> None:
        self.parts = parts
        self.store = store
        self.projects = projects
        self.clock = clock

    async def account(self, ref: str) -> Account:
        if is_uuid(ref):
            found = await self.store.get_account(normalize_uuid(ref))
        else:
            found = await self.store.get_account_by_email(normalize_email(ref))
        if found is None:
            raise CliError(f"no account {ref!r}")
        return found

    async def run(self, args: argparse.Namespace) -> Any:
        handler = getattr(self, "cmd_" + args.command.replace("-", "_"))
        return await handler(args)

    async def cmd_create_account(self, args: argparse.Namespace) -> Any:
        password = args.password or secrets.token_urlsafe(12)
        email = normalize_email(args.email)
        problem = password_problem(password, email=email)
        if problem:
            raise CliError(problem)
        account = await self.store.create_account(
            email_address=email, password_hash=await self.parts.passwords.hash(password),
            first_name=args.first_name, last_name=args.last_name, groups=("admin",) if args.admin else ())
        out = account.public()
        if not args.password:
            out["password"] = password
        return out

    async def cmd_make_admin(self, args: argparse.Namespace) -> Any:
        account = await self.account(args.account)
        groups = tuple(g for g in account.groups if g != "admin") + (() if args.revoke else ("admin",))
        await self.store.set_groups(account.account_id, groups)
        return {"account_id": account.account_id, "is_admin": not args.revoke}

    async def cmd_reset_password(self, args: argparse.Namespace) -> Any:
        account = await self.account(args.account)
        password = args.password or secrets.token_urlsafe(12)
        await self.parts.accounts.reset_password(account.account_id, password)
        return {"account_id": account.account_id, **({} if args.password else {"password": password})}

    async def cmd_ban(self, args: argparse.Namespace) -> Any:
        account = await self.account(args.account)
        await self.store.set_banned(account.account_id, not args.unban)
        if not args.unban:
            await self.store.delete_sessions(account.account_id)
        return {"account_id": account.account_id, "banned": not args.unban}

    async def cmd_create_project(self, args: argparse.Namespace) -> Any:
        owner = await self.account(args.owner)
        project = await self.store.create_project(owner_id=owner.account_id, title=args.title or "No Title",
                                                  description=args.description)
        return project.public()

    def _project_id(self, raw: str) -> str:
        if not is_uuid(raw):
            raise CliError(f"{raw!r} is not a project id (a UUID)")
        return normalize_uuid(raw)

    async def cmd_add_collaborator(self, args: argparse.Namespace) -> Any:
        project_id = self._project_id(args.project_id)
        account = await self.account(args.account)
        added = await self.projects.add_collaborator(ADMIN, project_id, account_id=account.account_id)
        return {"project_id": project_id, "account_id": added, "group": "collaborator"}

    async def cmd_remove_collaborator(self, args: argparse.Namespace) -> Any:
        project_id = self._project_id(args.project_id)
        account = await self.account(args.account)
        await self.projects.remove_collaborator(ADMIN, project_id, account.account_id)
        return {"project_id": project_id, "account_id": account.account_id, "removed": True}

    async def cmd_list_accounts(self, args: argparse.Namespace) -> Any:
        return [a.public() for a in await self.store.list_accounts(limit=args.limit)]

    async def cmd_list_projects(self, args: argparse.Namespace) -> Any:
        if args.account:
            account = await self.account(args.account)
            projects = await self.store.list_projects(account.account_id, limit=args.limit)
        else:
            projects = await self.store.list_all_projects(limit=args.limit)
        return [p.public() for p in projects]

    async def cmd_create_api_key(self, args: argparse.Namespace) -> Any:
        account = await self.account(args.account)
        caller = Caller(kind="account", account_id=account.account_id, is_admin=account.is_admin, via="admin-cli")
        project_id = self._project_id(args.project) if args.project else None
        key, secret = await self.parts.accounts.create_api_key(caller, name=args.name, expire=args.expire,
                                                               project_id=project_id)
        return {**key.public(), "secret": secret}

    async def cmd_create_registration_token(self, args: argparse.Namespace) -> Any:
        token = args.token or secrets.token_urlsafe(12)
        await self.store.create_registration_token(token, descr=args.description, limit=args.limit)
        return {"token": token, "limit": args.limit}

    async def cmd_set_project_settings(self, args: argparse.Namespace) -> Any:
        project_id = self._project_id(args.project_id)
        values: dict[str, int] = {}
        for item in args.values:
            name, sep, raw = item.partition("=")
            if not sep or name not in PROJECT_SETTINGS or not raw.isdigit():
                raise CliError(f"{item!r}: use NAME=INTEGER with NAME one of {', '.join(PROJECT_SETTINGS)}")
            values[name] = int(raw)
        if not await self.store.set_project_settings(project_id, values):
            raise CliError(f"no project {project_id}")
        return {"project_id": project_id, **values}

    async def control(self, args: argparse.Namespace) -> Any:
        """Project processes belong to the running hub: ask it, with the hub's own secret."""
        from cocalc_hub.admin_remote import default_hub, hub_request, parse_hub

        project_id = self._project_id(args.project_id)
        token = self.parts.auth.hub_password or ""
        try:
            hub = parse_hub(args.hub or default_hub())
        except ValueError as e:
            raise CliError(f"--hub: {e}") from None
        status, body = await hub_request(hub, f"projects/{args.command}", {"project_id": project_id}, token)
        if status != 200:
            raise CliError(body.get("error", f"the hub answered {status}") if isinstance(body, dict)
                           else f"the hub answered {status}")
        if isinstance(body, dict) and isinstance(body.get("state"), dict):
            return body["state"]
        return body

    cmd_start = cmd_stop = cmd_restart = cmd_state = control

    async def cmd_setup_link(self, args: argparse.Namespace) -> Any:
        """A fresh first-admin link, while no administrator exists (see cocalc_hub.auth.bootstrap)."""
        from cocalc_hub.admin_remote import default_hub
        from cocalc_hub.auth.bootstrap import SETUP_PATH, SETUP_TTL, AdminSetup

        setup = AdminSetup(self.store, self.parts.accounts, self.clock)
        if not await setup.needed():
            raise CliError("an administrator exists already; use make-admin EMAIL to add one")
        base = (args.url or args.hub or default_hub()).rstrip("/")
        if base.startswith(("unix:", "http+unix:")):
            base = "https://YOUR-HUB"  # a socket has no address a browser could use
        token = await setup.new_token()
        return {"link": f"{base}{SETUP_PATH}#token={token}",
                "expires_in_minutes": int(SETUP_TTL.total_seconds() // 60)}

    async def cmd_set_setting(self, args: argparse.Namespace) -> Any:
        await self.store.set_setting(args.name, args.value)
        return {"name": args.name, "value": args.value}


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=1, sort_keys=True))
        return
    rows = result if isinstance(result, list) else [result]
    for row in rows:
        if isinstance(row, dict):
            print("  ".join(f"{k}={_short(v)}" for k, v in row.items() if k not in ("users", "state")))
        else:
            print(row)


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from cocalc_hub.auth.service import build_auth
    from cocalc_hub.db import prepare_store
    from cocalc_hub.reactors import global_reactor

    reactor = global_reactor()

    os.umask(0o077)  # like the hub: what it creates in the data directory is private
    try:
        settings = from_options({"data": args.data, "database": args.database, "database-wait": "0"})
        store = prepare_store(settings, reactor)
    except SettingsError as e:
        print(f"cocalc-hub-admin: {e}", file=sys.stderr)
        return 2
    parts = build_auth(settings, store, reactor)
    outcome: dict[str, Any] = {}

    async def run(_: Any) -> None:
        await store.open()
        try:
            outcome["result"] = await Admin(parts, store, Projects(store), reactor).run(args)
        except (CliError, AuthError, HubUnreachable) as e:
            outcome["error"] = str(e)
        except Exception as e:  # the store's own errors (e.g. Conflict) have good messages
            outcome["error"] = f"{type(e).__name__}: {e}"
        finally:
            await store.close()
            parts.passwords.stop()

    _react(run)
    if "error" in outcome:
        print(f"cocalc-hub-admin: {outcome['error']}", file=sys.stderr)
        return 1
    _print(outcome.get("result"), args.json)
    return 0


def _react(run: Any) -> None:
    """Run ``run`` on the reactor to completion (without task.react's sys.exit)."""
    from twisted.internet import defer, reactor

    def go() -> None:
        d = defer.ensureDeferred(run(reactor))
        d.addErrback(lambda f: f.printTraceback(file=sys.stderr))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    cast(Any, reactor).run(installSignalHandlers=False)


if __name__ == "__main__":
    sys.exit(main())
