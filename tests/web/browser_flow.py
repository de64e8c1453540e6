"""The end-to-end walk through the web UI in headless Chromium, run by test_browser.py.

Playwright's sync API cannot run in trial's reactor thread, so this is a separate process:
``python browser_flow.py BASE_URL ARTIFACTS_DIR PORT SETUP_LINK`` (SETUP_LINK: the first-admin
link). It prints one JSON object per step
(``{"step", "ok", ...facts}``) and saves a screenshot of each page; on a failure it prints
``ok: false`` with the error, saves ``failure.png`` and exits 1.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, Response, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"
TIMEOUT_MS = 60_000


class Flow:
    def __init__(self, base: str, artifacts: Path, port: int, setup_link: str) -> None:
        self.setup_link = setup_link
        self.base = base.rstrip("/")
        self.prefix = re.sub(r"^https?://[^/]+", "", self.base)
        self.artifacts = artifacts
        self.port = port
        self.problems: list[str] = []
        self.shots = 0
        self.page: Page | None = None

    def report(self, step: str, **facts: Any) -> None:
        print(json.dumps({"step": step, "ok": True, **facts}), flush=True)

    def shot(self, page: Page, name: str) -> None:
        self.shots += 1
        page.screenshot(path=str(self.artifacts / f"{self.shots:02d}-{name}.png"), full_page=True)

    def watch(self, page: Page) -> Page:
        """Collect CSP violations and script errors: the UI must cause none."""
        page.set_default_timeout(TIMEOUT_MS)

        def console(msg: Any) -> None:
            if msg.type == "error" and ("Content Security Policy" in msg.text or "Refused to" in msg.text):
                self.problems.append(f"{page.url}: {msg.text}")

        page.on("console", console)
        page.on("pageerror", lambda err: self.problems.append(f"{page.url}: script error: {err}"))
        self.page = page
        return page

    def visible_errors(self, page: Page) -> int:
        """How many error messages the page shows (an API error must appear once)."""
        return page.locator(".error:visible").count()

    def new_context(self, browser: Browser, **kw: Any) -> BrowserContext:
        context = browser.new_context(viewport={"width": 1100, "height": 800}, **kw)
        context.set_default_timeout(TIMEOUT_MS)
        return context

    # steps -------------------------------------------------------------------------------

    def sign_up(self, page: Page, email: str, *, shots: bool) -> None:
        page.goto(f"{self.base}/auth/sign-up")
        expect(page.locator("#sign-up-form")).to_be_visible()
        page.get_by_label("First name").fill("Ada")
        page.get_by_label("Last name").fill("Lovelace")
        page.get_by_label("Email address").fill(email)
        page.get_by_label("Password").fill("short")
        page.get_by_role("button", name="Create account").click()
        error = page.locator("#sign-up-form .error")
        expect(error).to_be_visible()
        if shots:
            self.shot(page, "sign-up-error")
        too_short = error.inner_text()
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url(f"{self.base}/")
        expect(page.get_by_role("heading", name="Projects")).to_be_visible()
        self.report("sign-up", email=email, error_shown=too_short)

    def run(self, browser: Browser) -> None:
        owner = self.new_context(browser)
        page = self.watch(owner.new_page())
        page.goto(f"{self.base}/")
        expect(page.locator("header.top nav").get_by_role("link", name="Sign in")).to_be_visible()
        expect(page.locator("header.top .brand")).to_have_text("CoCalc")
        self.shot(page, "welcome")
        icon = page.locator('link[rel="icon"]').get_attribute("href") or ""
        favicons = {path: page.request.get(self.origin() + path).status
                    for path in (icon, f"{self.prefix}/favicon.ico", "/favicon.ico")}
        self.report("welcome", favicons=favicons)
        self.not_found(page)
        self.sign_up(page, "ada@example.com", shots=True)
        self.shot(page, "dashboard-empty")

        # Sign out, then sign in with the keyboard, first wrongly; ``next`` is honoured.
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(re.escape(f"{self.base}/auth/sign-in")))
        page.goto(f"{self.base}/settings")
        page.wait_for_url(re.compile(re.escape(f"{self.base}/auth/sign-in?next=")))
        page.get_by_label("Email address").fill("ada@example.com")
        page.get_by_label("Password").fill("wrong password here")
        page.get_by_label("Password").press("Enter")
        error = page.locator("#sign-in-form .error")
        expect(error).to_be_visible()
        self.shot(page, "sign-in-error")
        wrong = error.inner_text()
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_label("Password").press("Enter")
        page.wait_for_url(f"{self.base}/settings")
        self.report("sign-in", error_shown=wrong, landed=page.url)

        # Account page: an API key is shown once.
        page.get_by_label("Name").fill("laptop")
        page.get_by_role("button", name="Create key").click()
        expect(page.locator("#new-key code")).to_contain_text("sk-")
        expect(page.locator("#keys")).to_contain_text("laptop")
        self.shot(page, "account")
        self.report("api-key")

        # An attacker's next= is ignored after sign-in.
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(re.escape(f"{self.base}/auth/sign-in")))
        page.goto(f"{self.base}/auth/sign-in?next=//evil.example/steal")
        page.get_by_label("Email address").fill("ada@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{self.base}/")
        self.report("safe-next", landed=page.url)

        project_id = self.dashboard(page)
        self.project(page, project_id)
        self.outsider(browser, project_id, running=True)
        self.stop(page, project_id)
        self.outsider(browser, project_id, running=False)
        self.shared(browser, page)
        self.manage(page)
        self.admin(page)
        self.phone(browser, owner, project_id)
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(re.escape(f"{self.base}/auth/sign-in")))
        response = page.goto(f"{self.base}/{project_id}/raw/hello.txt")
        assert response is not None
        self.report("signed-out", raw_status=response.status)
        self.report("console", problems=self.problems)

    def origin(self) -> str:
        return self.base[: len(self.base) - len(self.prefix)]

    def not_found(self, page: Page) -> None:
        """The site's 404: its top bar, a way back, nothing of the URL."""
        response = page.goto(f"{self.base}/projects/no-such-thing")
        assert response is not None
        expect(page.locator("header.top")).to_be_visible()
        self.shot(page, "site-404")
        page.locator("main").get_by_role("link", name="your projects").click()
        page.wait_for_url(f"{self.base}/")
        self.report("site-404", status=response.status, back=page.url)

    def dashboard(self, page: Page) -> str:
        page.get_by_label("New project title").fill("Web test")
        page.get_by_role("button", name="Create project").click()
        card = page.locator("#projects .card", has_text="Web test")
        expect(card.locator(".state")).to_have_text("Stopped")
        self.shot(page, "dashboard-created")
        href = card.get_by_role("link", name="Web test").get_attribute("href") or ""
        project_id = href.rsplit("/", 1)[-1]
        card.get_by_role("button", name="Start", exact=True).click()
        expect(card.locator(".state")).to_have_text("Running")
        self.shot(page, "dashboard-running")
        self.report("project-started", project_id=project_id)
        return project_id

    def run_command(self, page: Page, command: str, *, wait_for: str) -> str:
        page.get_by_label(re.compile("^Command")).fill(command)
        page.get_by_role("button", name="Run", exact=True).click()
        expect(page.locator("#exec-output")).to_contain_text(wait_for)
        return page.locator("#exec-output").inner_text()

    def project(self, page: Page, project_id: str) -> None:
        page.get_by_role("link", name="Web test").click()
        page.wait_for_url(f"{self.base}/projects/{project_id}")
        expect(page.locator("#project-state")).to_have_text("Running")
        # A file to open through /raw/, and pages to serve under /server/ and /port/.
        port_dir = f"site/{project_id}/port/{self.port}"
        self.run_command(page, (
            "echo 'hello from raw' > hello.txt && mkdir -p " + port_dir + " && "
            "echo '<h1>Served from the project</h1>' > site/index.html && "
            "echo '<h1>Served under its base path</h1>' > " + port_dir + "/index.html"
        ), wait_for="Finished with exit code 0")
        page.get_by_role("button", name="Refresh the list").click()
        link = page.locator("#files").get_by_role("link", name="hello.txt")
        expect(link).to_be_visible()
        self.shot(page, "project")
        link.click()
        page.wait_for_url(f"{self.base}/{project_id}/raw/hello.txt")
        raw_text = page.locator("body").inner_text()
        self.shot(page, "raw-file")
        self.report("raw", text=raw_text)
        page.go_back()
        expect(page.locator("#project-state")).to_have_text("Running")

        output = self.run_command(page, f"cd site && exec python3 -u -m http.server {self.port} --bind 127.0.0.1",
                                  wait_for="Serving HTTP")
        self.shot(page, "project-server-running")
        page.get_by_label("Port number").fill(str(self.port))
        expect(page.locator("#port-links")).to_contain_text(f"/server/{self.port}/")
        page.get_by_role("button", name="Open /server/N/").click()
        page.wait_for_url(f"{self.base}/{project_id}/server/{self.port}/")
        server_heading = page.locator("h1").inner_text()
        self.shot(page, "via-server")
        page.go_back()
        page.get_by_label("Port number").fill(str(self.port))
        page.get_by_role("button", name="Open /port/N/").click()
        page.wait_for_url(f"{self.base}/{project_id}/port/{self.port}/")
        port_heading = page.locator("h1").inner_text()
        self.shot(page, "via-port")
        page.go_back()
        expect(page.locator("#project-state")).to_have_text("Running")
        self.report("web-server", exec_output=output[-300:], server=server_heading, port=port_heading)
        self.bad_gateway(page, project_id)

    def bad_gateway(self, page: Page, project_id: str) -> None:
        """A server in the project that accepts connections and closes them unanswered: 502."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        closer = ("python3 -u -c \"import socket; s = socket.socket(); "
                  "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                  f"s.bind(('127.0.0.1', {port})); s.listen(); print('closing every connection', flush=True); "
                  "exec('while True: s.accept()[0].close()')\"")
        self.run_command(page, closer, wait_for="closing every connection")
        response = page.goto(f"{self.base}/{project_id}/server/{port}/")
        assert response is not None
        expect(page.locator("main")).to_contain_text(f"The server on port {port} is not answering")
        self.shot(page, "proxy-502")
        page.locator("main").get_by_role("link", name="the project's page").click()
        page.wait_for_url(f"{self.base}/projects/{project_id}")
        expect(page.locator("#project-state")).to_have_text("Running")
        self.report("proxy-502", status=response.status)

    def outsider(self, browser: Browser, project_id: str, *, running: bool) -> None:
        """A second account must not reach anything of the first one's project."""
        previous = self.page
        context = self.new_context(browser)
        page = self.watch(context.new_page())
        if running:
            self.sign_up(page, "eve@example.com", shots=False)
        else:
            page.goto(f"{self.base}/auth/sign-in")
            page.get_by_label("Email address").fill("eve@example.com")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{self.base}/")
        expect(page.locator("#projects-status")).to_contain_text("no projects")
        statuses = {}
        for path in (f"/{project_id}/raw/hello.txt", f"/{project_id}/raw/", f"/{project_id}/server/{self.port}/",
                     f"/{project_id}/port/{self.port}/", f"/projects/{project_id}"):
            response = page.goto(self.base + path)
            assert response is not None
            statuses[path] = response.status
            body = page.locator("body").inner_text()
            if "hello from raw" in body or "Served" in body:
                statuses[path] = f"LEAKED {response.status}"
        self.shot(page, f"outsider-{'running' if running else 'stopped'}")
        if running:
            page.goto(f"{self.base}/{project_id}/server/{self.port}/")
            expect(page.locator("main")).to_contain_text("ask the project's owner to add you")
            self.shot(page, "proxy-403")
        context.close()
        self.page = previous
        self.report("outsider", running=running, statuses=statuses)

    def stop(self, page: Page, project_id: str) -> None:
        page.goto(f"{self.base}/projects/{project_id}")
        expect(page.locator("#project-state")).to_have_text("Running")
        page.get_by_role("button", name="Stop", exact=True).click()
        expect(page.locator("#project-state")).to_have_text("Stopped")
        expect(page.locator("#files-status")).to_contain_text("Start the project")
        self.shot(page, "project-stopped")
        response = page.goto(f"{self.base}/{project_id}/server/{self.port}/")
        assert response is not None
        expect(page.locator("main").get_by_role("button", name="Start the project")).to_be_visible()
        self.shot(page, "proxy-not-running")
        self.report("stopped", member_status=response.status, page=page.locator("body").inner_text()[:200])

    def shared(self, browser: Browser, page: Page) -> None:
        """Eve shares a project of hers with Ada: Ada's dashboard marks it as shared."""
        previous = self.page
        context = self.new_context(browser)
        eve = self.watch(context.new_page())
        eve.goto(f"{self.base}/auth/sign-in")
        eve.get_by_label("Email address").fill("eve@example.com")
        eve.get_by_label("Password").fill(PASSWORD)
        eve.get_by_role("button", name="Sign in").click()
        eve.wait_for_url(f"{self.base}/")
        eve.get_by_label("New project title").fill("Eve's notes")
        eve.get_by_role("button", name="Create project").click()
        card = eve.locator("#projects .card", has_text="Eve's notes")
        expect(card.locator(".state")).to_have_text("Stopped")
        expect(card.locator(".shared")).to_be_hidden()  # her own
        card.locator("summary").click()
        card.get_by_label("Add by email").fill("ada@example.com")
        card.get_by_role("button", name="Add", exact=True).click()
        expect(card.locator(".collabs li")).to_have_count(2)
        context.close()
        self.page = previous
        page.goto(f"{self.base}/")
        theirs = page.locator("#projects .card", has_text="Eve's notes")
        expect(theirs.locator(".shared")).to_have_text("Shared with you")
        expect(page.locator("#projects .card", has_text="Web test").locator(".shared")).to_be_hidden()
        theirs.locator("summary").click()
        delete_hidden = theirs.get_by_role("button", name="Delete project").is_hidden()  # only the owner may
        self.shot(page, "dashboard-shared")
        theirs.locator("summary").click()
        self.report("shared", delete_hidden=delete_hidden)

    def manage(self, page: Page) -> None:
        """Rename, and add and remove a collaborator by email, from the dashboard."""
        page.goto(f"{self.base}/")
        card = page.locator("#projects .card", has_text="Web test")
        card.locator("summary").click()
        card.get_by_label("Title").fill("Web test renamed")
        card.get_by_role("button", name="Rename").click()
        expect(card.locator(".p-title")).to_have_text("Web test renamed")
        card.get_by_label("Add by email").fill("nobody@example.com")
        card.get_by_role("button", name="Add", exact=True).click()
        error = card.locator(".add-collab .error")
        expect(error).to_be_visible()
        unknown = error.inner_text()
        errors_shown = self.visible_errors(page)  # once, and inside the form that failed
        self.shot(page, "api-error-in-form")
        card.get_by_label("Add by email").fill("eve@example.com")
        card.get_by_role("button", name="Add", exact=True).click()
        expect(card.locator(".collabs li")).to_have_count(2)
        self.shot(page, "dashboard-manage")
        card.get_by_role("button", name=re.compile("^Remove")).click()
        expect(card.locator(".collabs li")).to_have_count(1)
        title = card.get_by_label("Title")
        title.fill("Web test")
        # The dashboard polls the project list; a poll that lands after the user typed, once focus
        # has left the field (as clicking Rename does), must keep what they typed.
        def polled(response: Response) -> bool:
            return "/api/v2/projects/get" in response.url and response.ok

        with page.expect_response(polled):
            title.blur()
        with page.expect_response(polled):
            pass  # the poller starts its next request only once the previous one was handled
        kept = title.input_value()
        assert kept == "Web test", f"a poll replaced the typed title with {kept!r}"
        card.get_by_role("button", name="Rename").click()
        expect(card.locator(".p-title")).to_have_text("Web test")
        self.report("manage", unknown_email_error=unknown, errors_shown=errors_shown)

    def become_admin(self, page: Page) -> None:
        """Sign-up made no administrator: the hub's one-time setup link makes one."""
        response = page.goto(f"{self.base}/admin")
        assert response is not None and response.status == 403, response
        page.goto(f"{self.base}/auth/setup#token=not-the-token")
        expect(page.locator("#setup-status")).to_contain_text("not valid")
        wrong = page.locator("#setup-status").inner_text()
        page.goto(self.setup_link)
        button = page.get_by_role("button", name="Make my account an administrator")
        expect(button).to_be_visible()
        self.shot(page, "setup-admin")
        button.click()
        page.wait_for_url(f"{self.base}/admin")
        page.goto(self.setup_link)  # used up
        expect(page.locator("#setup-status")).to_contain_text("already exists")
        self.report("setup-admin", wrong_token=wrong, reused=page.locator("#setup-status").inner_text())

    def admin(self, page: Page) -> None:
        self.become_admin(page)
        page.goto(f"{self.base}/admin")
        expect(page.locator("#accounts tr")).to_have_count(2)
        expect(page.locator("#all-projects")).to_contain_text("Web test")
        expect(page.locator("#signup-mode")).to_have_text("Sign-up is open.")
        self.shot(page, "admin")
        openapi = page.get_by_role("link", name="OpenAPI document").get_attribute("href") or ""
        spec = page.request.get(self.origin() + openapi)
        paths = len(spec.json()["paths"]) if spec.ok else 0
        # Errors appear once, next to what failed: a token that exists already (409)…
        token_form = page.locator("#token-form")
        for created in (True, False):
            token_form.get_by_label(re.compile("^Token")).fill("class-of-2024")
            token_form.get_by_role("button", name="Create token").click()
            if created:
                expect(page.locator("#tokens")).to_contain_text("class-of-2024")
        expect(token_form.locator(".error")).to_contain_text("already exists")
        self.shot(page, "api-error-admin-token")
        token_errors = self.visible_errors(page)
        # …then removing one's own admin rights (400): the token's error goes, this one shows.
        page.get_by_role("button", name="Remove admin: ada@example.com").click()
        expect(page.locator("#accounts-error")).to_contain_text("own admin rights")
        expect(token_form.locator(".error")).to_be_hidden()
        admin_errors = self.visible_errors(page)
        # Closing sign-up takes effect on the sign-up page.
        page.get_by_label("Sign-up with email").select_option("no")
        page.get_by_role("button", name="Save settings").click()
        expect(page.locator("#signup-mode")).to_have_text("Sign-up is closed.")
        visitor = page.context.browser.new_context()  # type: ignore[union-attr]
        other = visitor.new_page()
        other.goto(f"{self.base}/auth/sign-up")
        expect(other.locator("#signup-status")).to_contain_text("Sign-up is closed")
        form_hidden = other.locator("#sign-up-form").is_hidden()
        self.shot(other, "sign-up-closed")
        visitor.close()
        self.report("admin", accounts=page.locator("#accounts tr").count(), signup_form_hidden=form_hidden,
                    openapi_paths=paths, token_errors=token_errors, admin_errors=admin_errors)

    def phone(self, browser: Browser, owner: BrowserContext, project_id: str) -> None:
        """The same pages on a phone-sized screen, with the owner's cookies."""
        phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                    is_mobile=True, has_touch=True, storage_state=owner.storage_state())
        previous = self.page
        page = self.watch(phone.new_page())
        page.goto(f"{self.base}/")
        expect(page.locator("#projects .card")).to_have_count(2)
        width = page.evaluate("document.documentElement.scrollWidth")
        self.shot(page, "phone-dashboard")
        page.goto(f"{self.base}/projects/{project_id}")
        expect(page.locator("#project-state")).to_have_text("Stopped")
        project_width = page.evaluate("document.documentElement.scrollWidth")
        self.shot(page, "phone-project")
        page.goto(f"{self.base}/admin")
        expect(page.locator("#accounts tr")).to_have_count(2)
        expect(page.locator("#all-projects tr")).to_have_count(2)
        admin_width = page.evaluate("document.scrollingElement.scrollWidth")
        self.shot(page, "phone-admin")
        phone.close()
        self.page = previous
        self.report("phone", scroll_width=max(width, project_width), admin_width=admin_width)


def main() -> int:
    base, artifacts, port, setup_link = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.glob("*.png"):
        old.unlink()
    flow = Flow(base, artifacts, port, setup_link)
    with sync_playwright() as p:
        # launch() gives every run a fresh temporary profile (user-data-dir) of its own.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=TIMEOUT_MS)
        try:
            flow.run(browser)
        except Exception as e:
            if flow.page is not None and not flow.page.is_closed():
                try:
                    flow.page.screenshot(path=str(artifacts / "failure.png"), full_page=True)
                except Exception:
                    pass
            print(json.dumps({"step": "failure", "ok": False, "error": f"{type(e).__name__}: {e}",
                              "url": flow.page.url if flow.page is not None else None,
                              "problems": flow.problems}), flush=True)
            return 1
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
