"""The web UI's pages over HTTP: who sees which page, redirects, CSP, CSRF token, escaping, weight."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from cocalc_hub.web.pages import CSP, PACKAGE_ASSETS, UI_ASSETS
from tests.support import make_admin, parse_response, raw_get, raw_http, settings_for, start_hub
from tests.web.api_client import ApiClient, Response

UUID = "0b6c2b80-66a5-4a5e-9c49-2d7a4c1f7e11"


class PagesTests(unittest.TestCase):
    base_path = "/"

    async def setUp(self) -> None:  # type: ignore[override]
        env = {} if self.base_path == "/" else {"BASE_PATH": self.base_path}
        self.hub = start_hub(self, settings_for(self.mktemp(), env=env))
        self.prefix = "" if self.base_path == "/" else self.base_path
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.admin = ApiClient(self.hub.base, pool)
        r = await self.admin.sign_up("admin@example.com")
        self.assertEqual(r.code, 201)
        await make_admin(self.hub, r.json["account_id"])
        self.user = ApiClient(self.hub.base, pool)
        self.assertEqual((await self.user.sign_up("user@example.com")).code, 201)
        self.anon = ApiClient(self.hub.base, pool)

    async def page(self, client: ApiClient, path: str, method: str = "GET", encoding: str = "identity") -> Response:
        """Like a browser (the client's cookies), but raw: no redirects followed, no decoding."""
        headers = {"Accept-Encoding": encoding}
        if client.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        raw = await raw_http(self.hub.port, raw_get(self.prefix + path, headers=headers, method=method))
        status, head, body = parse_response(raw)
        return Response(status, Headers({k: [v] for k, v in head.items()}), body)

    def location(self, r: Response) -> str:
        return (r.headers.getRawHeaders(b"location") or [b""])[0].decode()

    def header(self, r: Response, name: str) -> str:
        return (r.headers.getRawHeaders(name.encode()) or [b""])[0].decode()

    async def test_anonymous_root_is_the_welcome_page(self) -> None:
        r = await self.page(self.anon, "/")
        self.assertEqual(r.code, 200)
        self.assertIn(f'href="{self.prefix}/auth/sign-in"'.encode(), r.body)
        self.assertIn(f'href="{self.prefix}/auth/sign-up"'.encode(), r.body)
        self.assertEqual(self.header(r, "content-security-policy"), CSP.decode())
        self.assertIn("Cookie", self.header(r, "vary"))
        head = await self.page(self.anon, "/", method="HEAD")
        self.assertEqual((head.code, head.body), (200, b""))
        self.assertEqual(self.header(head, "content-length"), str(len(r.body)))

    async def test_pages_need_sign_in_and_keep_next(self) -> None:
        for path in ("/projects", "/settings", "/admin", f"/projects/{UUID}", "/settings?tab=keys"):
            r = await self.page(self.anon, path)
            self.assertEqual(r.code, 303, path)
            self.assertEqual(self.location(r), f"{self.prefix}/auth/sign-in?next={quote(self.prefix + path, safe='/')}")

    async def test_signed_in_dashboard(self) -> None:
        r = await self.page(self.user, "/")
        self.assertEqual(r.code, 200)
        text = r.body.decode()
        self.assertIn("<h1>Projects</h1>", text)
        self.assertEqual(self.header(r, "content-security-policy"), CSP.decode())
        self.assertEqual(self.header(r, "cache-control"), "no-store")
        self.assertEqual(self.header(r, "x-frame-options"), "DENY")
        token = re.search(r'<meta name="csrf-token" content="([^"]*)">', text)
        assert token is not None
        self.assertEqual(token.group(1), self.user.csrf_token())
        self.assertNotIn(f'href="{self.prefix}/admin"', text)  # not an admin
        self.assertIn(f'src="{self.prefix}/static/app.js?v=', text)
        # Admins get the Admin link.
        admin_page = (await self.page(self.admin, "/projects")).body.decode()
        self.assertIn(f'href="{self.prefix}/admin"', admin_page)

    async def test_no_inline_script_or_style(self) -> None:
        project = (await self.user.post("projects/create", {"title": "P"})).json["project_id"]
        pages = ["/", "/settings", f"/projects/{project}"]
        for path in pages:
            text = (await self.page(self.user, path)).body.decode()
            for tag in re.findall(r"<script\b[^>]*>", text):
                self.assertIn(" src=", tag, path)
            self.assertNotRegex(text, r"<[^>]+\son[a-z]+\s*=", path)
            self.assertNotRegex(text, r"<[^>]+\sstyle\s*=", path)
            self.assertNotIn("<style", text, path)
            self.assertNotIn("javascript:", text, path)
        errors = [(self.user, "/admin"), (self.user, "/projects/nothing"), (self.anon, "/auth/nothing")]
        for client, path in errors:  # error pages: no script at all
            r = await self.page(client, path)
            self.assertGreaterEqual(r.code, 400, path)
            self.assertNotIn("<script", r.body.decode(), path)
            self.assertNotRegex(r.body.decode(), r"<[^>]+\sstyle\s*=", path)
            self.assertNotIn("<style", r.body.decode(), path)
            self.assertNotIn("unsafe-inline", self.header(r, "content-security-policy"), path)
        for name in ("sign-in", "sign-up"):
            text = (await self.page(self.anon, f"/auth/{name}")).body.decode()
            self.assertIn('<form id="' + name + '-form"', text)
            self.assertIn('<meta name="csrf-token" content="">', text)
            for tag in re.findall(r"<script\b[^>]*>", text):
                self.assertIn(" src=", tag)

    async def test_sign_in_page_sends_signed_in_users_on_safely(self) -> None:
        cases = {
            "/settings": f"{self.prefix}/settings",
            f"{self.prefix}/settings?x=1": f"{self.prefix}/settings?x=1",
            "//evil.example/": f"{self.prefix}/",
            "https://evil.example/": f"{self.prefix}/",
            "/\\evil.example": f"{self.prefix}/",
            "": f"{self.prefix}/",
        }
        for target, expected in cases.items():
            if self.prefix and target == "/settings":
                expected = f"{self.prefix}/"  # outside the base path
            r = await self.page(self.user, f"/auth/sign-in?next={quote(target, safe='')}")
            self.assertEqual((r.code, self.location(r)), (303, expected), target)
        self.assertEqual((await self.page(self.user, "/auth/sign-up")).code, 303)

    async def test_admin_page_is_for_admins(self) -> None:
        r = await self.page(self.admin, "/admin")
        self.assertEqual(r.code, 200)
        self.assertIn(f'href="{self.prefix}/api/v2/openapi.json"', r.body.decode())  # the API's description
        r = await self.page(self.user, "/admin")
        self.assertEqual(r.code, 403)
        self.assertIn(b"Only administrators", r.body)

    async def test_error_pages_have_the_header_and_a_way_on(self) -> None:
        """The site's top bar with this visitor's links (no script: no sign-out button), the
        site's name, and what to do next."""
        self.assertEqual((await self.admin.post("admin/set-setting", {"name": "site_name", "value": "Lab <hub>"})
                          ).code, 200)
        r = await self.page(self.user, "/admin")
        text = r.body.decode()
        self.assertIn('<header class="top"><a class="brand" href="' + self.prefix + '/">Lab &lt;hub&gt;</a>', text)
        self.assertIn(f'<a href="{self.prefix}/settings">Account</a>', text)
        self.assertNotIn("sign-out", text)
        self.assertIn("Ask an administrator", text)
        project = (await self.admin.post("projects/create", {"title": "Theirs"})).json["project_id"]
        r = await self.page(self.user, f"/projects/{project}")
        self.assertEqual(r.code, 403)
        self.assertIn(b"You are not a collaborator on this project.", r.body)  # a sentence
        self.assertIn(b"Ask the project's owner to add you", r.body)
        self.assertIn(f'href="{self.prefix}/"'.encode(), r.body)
        self.assertNotIn(b"Theirs", r.body)
        r = await self.page(self.user, f"/projects/{UUID}")
        self.assertEqual(r.code, 404)
        self.assertIn(b"It may have been deleted", r.body)
        r = await self.page(self.anon, "/auth/nothing")
        self.assertEqual(r.code, 404)
        self.assertIn(f'<a href="{self.prefix}/auth/sign-in">Sign in</a>'.encode(), r.body)
        self.assertIn(f'<link rel="icon" href="{self.prefix}/static/favicon.svg"'.encode(), r.body)

    async def test_projects_get_tells_the_callers_group(self) -> None:
        """The dashboard marks projects shared with the caller (group is not owner)."""
        project = (await self.admin.post("projects/create", {"title": "Shared"})).json["project_id"]
        r = await self.admin.post("projects/collaborators/add", {"project_id": project, "email": "user@example.com"})
        self.assertEqual(r.code, 200)
        own = (await self.user.post("projects/create", {"title": "Own"})).json["project_id"]
        groups = {p["project_id"]: p["group"] for p in (await self.user.get("projects/get")).json}
        self.assertEqual(groups, {project: "collaborator", own: "owner"})
        one = (await self.admin.post("projects/get", {"project_id": own})).json  # an admin, not a member
        self.assertIsNone(one[0]["group"])

    async def test_project_page_access_and_escaping(self) -> None:
        title = '<script>alert(1)</script> {{csrf}} "quoted"'
        project = (await self.user.post("projects/create", {"title": title})).json["project_id"]
        r = await self.page(self.user, f"/projects/{project.upper()}")
        self.assertEqual(r.code, 200)
        text = r.body.decode()
        self.assertNotIn("<script>alert(1)", text)
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt; {{csrf}} &quot;quoted&quot;", text)
        self.assertIn(f'data-project-id="{project}"', text)
        self.assertIn(f'href="{self.prefix}/{project}/raw/"', text)
        other = ApiClient(self.hub.base, HTTPConnectionPool(reactor, persistent=False))
        await other.sign_up("other@example.com")
        r = await self.page(other, f"/projects/{project}")
        self.assertEqual(r.code, 403)
        self.assertNotIn(b"alert(1)", r.body)
        self.assertEqual((await self.page(other, f"/projects/{UUID}")).code, 404)
        self.assertEqual((await self.page(self.admin, f"/projects/{project}")).code, 200)  # admins see all

    async def test_unknown_pages_do_not_echo(self) -> None:
        for path in ("/auth/<script>x</script>", "/projects/not-a-uuid<b>", "/settings/more", "/admin/x"):
            raw = await raw_http(self.hub.port, raw_get(self.prefix + path))
            status, _, body = parse_response(raw)
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"<script>x", body)
            self.assertNotIn(b"<b>", body)

    async def test_first_page_weighs_under_100_kb(self) -> None:
        """The dashboard with everything it loads, as a browser gets it (gzip)."""
        r = await self.page(self.user, "/", encoding="gzip")
        total = len(r.body)
        text = r.body.decode()
        assets = re.findall(r'(?:href|src)="' + re.escape(self.prefix) + r'(/static/[^"?]+)\?v=', text)
        self.assertEqual(sorted(set(assets)), ["/static/app.css", "/static/app.js", "/static/projects.js"])
        for path in set(assets):
            asset = await self.page(self.user, path, encoding="gzip")
            self.assertEqual(self.header(asset, "content-encoding"), "gzip", path)
            self.assertEqual(asset.code, 200, path)
            total += len(asset.body)
        self.assertLess(total, 100_000)

    def test_assets_exist_and_stay_small(self) -> None:
        for name in UI_ASSETS:
            path = Path(PACKAGE_ASSETS) / name
            self.assertTrue(path.is_file(), name)
            self.assertLess(len(path.read_text().splitlines()), 600, name)


class PagesUnderBasePathTests(PagesTests):
    base_path = "/my/hub"
