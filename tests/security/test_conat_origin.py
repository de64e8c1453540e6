"""Attacker: a page on another site, opening the hub's conat WebSocket from the victim's
browser. The browser attaches the victim's session cookie to the upgrade whatever page
asked for it, and says which page that was in ``Origin``; the hub must refuse such an
upgrade unless the page is the hub's own (or an origin the operator allowed). Programs
(no ``Origin``) and clients signing in with an API key or the hub password are unaffected.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.settings import SettingsError
from tests.proxy.support import ws_handshake
from tests.support import settings_for, start_hub
from tests.web.api_client import ApiClient

CONAT = "/conat/?EIO=4&transport=websocket"


class ConatOriginTests(unittest.TestCase):
    timeout = 60

    async def victim(self, options: dict[str, str] | None = None) -> tuple[int, str, str]:
        """A hub and a signed-in victim: (port, the victim's Cookie header, the hub password)."""
        hub = start_hub(self, settings_for(self.mktemp(), options))
        c = ApiClient(hub.base, HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual((await c.sign_up("victim@example.com")).code, 201)
        key = (await c.post("api-keys", {"action": "create"})).json["response"]["secret"]
        self.api_key = f"api_key={key}"
        password = (Path(hub.hub.settings.secrets_dir) / "conat-password").read_text().strip()
        return hub.port, "; ".join(f"{k}={v}" for k, v in c.cookies.items()), password

    async def status(self, port: int, cookie: str, origin: str | None) -> int:
        headers = {"Cookie": cookie}
        if origin is not None:
            headers["Origin"] = origin
        status, raw = await ws_handshake(port, CONAT, headers)
        if status != 101:
            self.assertNotIn(b"sha512$", raw)  # the answer never echoes the cookie
        return status

    async def test_foreign_pages_cannot_use_the_session_cookie(self) -> None:
        port, session, password = await self.victim()
        for origin in ("https://evil.example", "http://evil.example", "null", "http://hub.test.evil.example",
                       "https://hub.test", "http://hub.test:8080", "http://evil.example#http://hub.test", ""):
            self.assertEqual(await self.status(port, session, origin), 403, f"Origin: {origin!r}")
        # The hub's own pages, and programs (no Origin), are let in.
        for origin in ("http://hub.test", "HTTP://HUB.TEST", "http://hub.test:80", None):
            self.assertEqual(await self.status(port, session, origin), 101, f"Origin: {origin!r}")
        # Credentials a foreign page cannot make a browser send are not affected.
        self.assertEqual(await self.status(port, f"hub_password={password}", "https://evil.example"), 101)
        self.assertEqual(await self.status(port, self.api_key, "https://evil.example"), 101)

    async def test_operator_allow_list(self) -> None:
        port, session, _ = await self.victim({"conat-allowed-origins": "https://app.example.com, http://other:8080"})
        self.assertEqual(await self.status(port, session, "https://app.example.com"), 101)
        self.assertEqual(await self.status(port, session, "https://app.example.com:443"), 101)
        self.assertEqual(await self.status(port, session, "http://other:8080"), 101)
        self.assertEqual(await self.status(port, session, "https://evil.example"), 403)
        self.assertEqual(await self.status(port, session, "http://app.example.com"), 403)

    def test_allow_list_setting_is_validated(self) -> None:
        settings = settings_for(self.mktemp(), env={"COCALC_CONAT_ALLOWED_ORIGINS": "https://A.example:443 http://b:81"})
        self.assertEqual(settings.conat_allowed_origins, frozenset({"https://a.example", "http://b:81"}))
        for bad in ("https://a.example/path", "evil.example", "ftp://x", "https://user@x", "https://x?q"):
            with self.assertRaises(SettingsError) as caught:
                settings_for(self.mktemp(), {"conat-allowed-origins": bad})
            self.assertTrue(str(caught.exception).startswith("--conat-allowed-origins: "), str(caught.exception))

    async def test_forwarding_process_checks_origin_too(self) -> None:
        """Split processes: the web process forwards /conat/ to the broker. It refuses a
        foreign page's upgrade itself, and a same-site one still reaches the broker (which
        compares Origin with its own address, so the web process does not pass it on)."""
        tmp = self.mktemp()
        broker = start_hub(self, settings_for(tmp, {"conat-server": True}))
        web = start_hub(self, settings_for(tmp, {"proxy-server": True}, {"CONAT_SERVER": broker.root}))
        c = ApiClient(web.base, HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual((await c.sign_up("victim@example.com")).code, 201)
        session = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        self.assertEqual(await self.status(web.port, session, "https://evil.example"), 403)
        self.assertEqual(await self.status(web.port, session, "http://hub.test"), 101)
        self.assertEqual(await self.status(broker.port, session, "https://evil.example"), 403)
