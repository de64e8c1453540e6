"""Attacker: a project's web server answering with redirects to another site.

A link to a project's server is a link on the hub's origin; if the project could answer
it with ``Location: //evil.example/`` the hub would be an open redirector for whoever
runs a project. Every spelling a browser resolves to another host is refused (502, and
the redirect never reaches the browser) or, on ``/server/`` routes where the hub puts the
project's prefix in front of a path, rewritten into a path under that prefix; redirects
that stay on the hub pass.
"""

from __future__ import annotations

from urllib.parse import quote

from twisted.trial import unittest

from tests.proxy.support import Harness

OFF_SITE = [
    "//evil.example/x",
    "///evil.example/x",
    "/\\evil.example/x",
    "\\\\evil.example/x",
    "\\/evil.example",
    " //evil.example/x",
    "/\t/evil.example/x",
    "https://evil.example/",
    "HTTPS://EVIL.EXAMPLE/",
    "http:evil.example",
    "https:\\\\evil.example",
    "http://hub.test@evil.example/",
    "http://evil.example\\@hub.test/",
    "http://hub.test.evil.example/",
    "http://127.0.0.1:1/",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
]


class OffSiteRedirectTests(unittest.TestCase):
    timeout = 120

    async def respond(self, h: Harness, route: str, header: str, status: int = 302) -> tuple[int, dict[str, str]]:
        query = f"status={status}&h=" + quote(header, safe="")
        code, headers, _, _ = await h.get(f"/{h.a}/{route}/{h.port_a}/special/respond?{query}", client=h.owner)
        return code, headers

    async def test_project_cannot_redirect_off_site(self) -> None:
        h = await Harness().setup(self)
        prefix = f"{h.path_base}/{h.a}/server/{h.port_a}"
        for route in ("server", "port"):
            for target in OFF_SITE:
                for status, header in ((302, "Location"), (301, "Location"), (303, "Location"), (307, "Location"),
                                       (308, "Location"), (200, "Refresh")):
                    value = target if header == "Location" else f"0; url={target}"
                    code, headers = await self.respond(h, route, f"{header}: {value}", status)
                    given = headers.get(header.lower())
                    if code == 502:
                        self.assertIsNone(given)
                        continue
                    # Only a path under the project's own prefix may come through.
                    url = given.split("url=", 1)[1] if given and header == "Refresh" else given
                    self.assertEqual(route, "server", f"{route}: {header}: {value!r} answered {code} {given!r}")
                    self.assertTrue(url and url.startswith(prefix + "/"), f"{header}: {value!r} became {given!r}")
        # Redirects that stay on the site still work.
        stays = [
            ("server", "/login", f"{prefix}/login"),
            ("server", "next?x=1", "next?x=1"),
            ("server", f"http://127.0.0.1:{h.port_a}/landed", f"{prefix}/landed"),
            ("server", "http://hub.test/elsewhere/on/the/hub", "http://hub.test/elsewhere/on/the/hub"),
            ("port", f"{h.path_base}/{h.a}/port/{h.port_a}/login", f"{h.path_base}/{h.a}/port/{h.port_a}/login"),
            ("port", "#top", "#top"),
        ]
        for route, location, expected in stays:
            code, headers = await self.respond(h, route, f"Location: {location}")
            self.assertEqual((code, headers.get("location")), (302, expected), location)
        # A Location a browser does not follow (201 Created) is left alone.
        code, headers = await self.respond(h, "port", "Location: https://storage.example/obj/1", 201)
        self.assertEqual((code, headers.get("location")), (201, "https://storage.example/obj/1"))


REFRESH_OFF_SITE = [
    # every form of the HTML standard's declarative refresh that names a URL
    "0; //evil.example/",
    "0;//evil.example/",
    "0,//evil.example",
    "0 https://evil.example",
    "0 ;https://evil.example",
    "1.5. https://evil.example/",
    ".5; https://evil.example/",
    "0; 'https://evil.example/'",
    "0; URL = \"https://evil.example/\"",
    "0;\tURL='//evil.example/'",
    "  3 , uRl= //evil.example/x",
    # what a browser ignores but has more than a delay is refused too (fail closed)
    "soon; url=https://evil.example/",
    "0x; url=https://evil.example/",
    "\x0b0; url=https://evil.example/",
]
REFRESH_ON_SITE = [("5", "5"), ("0; url=/elsewhere", "0; url=/elsewhere"), ("0; next?x=1", "0; next?x=1"),
                   ("0; url='#top'", "0; url='#top'"), ("0,", "0,")]


class RefreshSpellingTests(unittest.TestCase):
    """The ``Refresh`` header is read the way a browser reads it, not only its ``url=`` form."""

    timeout = 120

    async def test_refresh_without_url_equals_is_refused(self) -> None:
        h = await Harness().setup(self)
        for route in ("port", "server"):
            for value in REFRESH_OFF_SITE:
                query = "status=200&h=" + quote(f"Refresh: {value}", safe="")
                code, headers, _, _ = await h.get(f"/{h.a}/{route}/{h.port_a}/special/respond?{query}",
                                                  client=h.owner)
                self.assertEqual((code, headers.get("refresh")), (502, None), f"{route}: Refresh: {value!r}")
        for value, expected in REFRESH_ON_SITE:
            query = "status=200&h=" + quote(f"Refresh: {value}", safe="")
            code, headers, _, _ = await h.get(f"/{h.a}/port/{h.port_a}/special/respond?{query}", client=h.owner)
            self.assertEqual((code, headers.get("refresh")), (200, expected), value)
