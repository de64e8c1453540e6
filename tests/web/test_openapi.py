"""The JSON API's OpenAPI document: served by a real hub, made from the endpoint registry."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pkgutil
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

import cocalc_hub.web.api
from cocalc_hub.auth.cookies import CookieNames
from cocalc_hub.web.api import Ctx, EndpointTable, Param
from cocalc_hub.web.api.openapi import document
from cocalc_hub.web.api.registry import MODULES, api_endpoints
from tests.support import CI, parse_response, raw_get, raw_http, settings_for, start_hub
from tests.web.api_client import ApiClient


def refs(node: Any) -> list[str]:
    """Every ``$ref`` in a JSON document."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


ENDPOINTS = api_endpoints()

EXPECTED_PATHS = (
    "v2/auth/sign-up", "v2/auth/sign-in", "v2/auth/setup-admin", "v2/auth/requires-token", "v2/auth/csrf",
    "v2/accounts/sign-out", "v2/accounts/profile", "v2/accounts/set-password", "v2/api-keys",
    "v2/admin/accounts", "v2/admin/projects", "v2/admin/set-admin", "v2/admin/ban", "v2/admin/settings",
    "v2/admin/set-setting", "v2/admin/create-registration-token",
    "v2/projects/create", "v2/projects/get", "v2/projects/update", "v2/projects/delete",
    "v2/projects/collaborators/add", "v2/projects/collaborators/remove", "v2/projects/collaborators/list",
    "v2/projects/start", "v2/projects/stop", "v2/projects/restart", "v2/projects/state", "v2/projects/touch",
    "v2/exec",
)
"""Every endpoint, in the OpenAPI document's order (a new one is added here on purpose)."""


class RegistryTests(unittest.TestCase):
    """Endpoints are listed in one place (cocalc_hub.web.api.registry), not registered by imports."""

    def test_the_registered_endpoints_are_the_expected_list(self) -> None:
        self.assertEqual(tuple(api_endpoints()), EXPECTED_PATHS)

    def test_every_module_with_endpoints_is_listed(self) -> None:
        package = cocalc_hub.web.api
        with_endpoints = set()
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            if isinstance(getattr(module, "ENDPOINTS", None), EndpointTable):
                with_endpoints.add(module.__name__)
        self.assertEqual({m.__name__ for m in MODULES}, with_endpoints)

    def test_a_path_claimed_twice_is_refused(self) -> None:
        table = EndpointTable()

        async def handler(ctx: Ctx) -> dict[str, Any]:
            return {}

        table.endpoint("v2/x")(handler)
        self.assertRaises(ValueError, table.endpoint("v2/x"), handler)


class OpenApiTests(unittest.TestCase):
    base_path = "/"

    async def setUp(self) -> None:  # type: ignore[override]
        env = {} if self.base_path == "/" else {"BASE_PATH": self.base_path}
        self.hub = start_hub(self, settings_for(self.mktemp(), env=env))
        self.prefix = "" if self.base_path == "/" else self.base_path
        self.anon = ApiClient(self.hub.base, HTTPConnectionPool(reactor, persistent=False))

    async def fetch(self) -> dict[str, Any]:
        r = await self.anon.get("openapi.json")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"])
        doc: dict[str, Any] = json.loads(r.body)
        return doc

    async def test_every_endpoint_with_its_methods_auth_and_parameters(self) -> None:
        doc = await self.fetch()
        self.assertEqual(doc["openapi"], "3.1.0")
        self.assertEqual(doc["servers"], [{"url": f"{self.prefix}/api"}])
        paths = doc["paths"]
        self.assertGreaterEqual(len(ENDPOINTS), 28)
        for name, ep in ENDPOINTS.items():
            item = paths.get("/" + name)
            self.assertIsNotNone(item, name)
            self.assertEqual(set(item), {"post", "get"} if ep.read_only else {"post"}, name)
            for method, op in item.items():
                self.assertTrue(op["summary"], name)
                self.assertEqual(op["security"] == [], ep.anonymous, name)  # [] is "no credentials"
                if not ep.anonymous:
                    self.assertIn("401", op["responses"], name)
                self.assertTrue(any(s.startswith("2") for s in op["responses"]), name)
                self.assertTrue(any(s.startswith(("4", "5")) for s in op["responses"]), name)
                if method == "get":
                    declared = {p["name"]: p for p in op["parameters"]}
                else:
                    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
                    schema = body.get("schema", {"properties": {}})
                    declared = {k: {"required": k in schema.get("required", []), **v}
                                for k, v in schema["properties"].items()}
                self.assertEqual(set(declared), {p.name for p in ep.params}, f"{method} {name}")
                for p in ep.params:
                    self.assertEqual(bool(declared[p.name]["required"]), p.required, f"{name} {p.name}")
        # Nothing but the registry (and the document itself).
        self.assertEqual(set(paths), {"/" + name for name in ENDPOINTS} | {"/v2/openapi.json"})
        self.assertEqual(doc["components"]["securitySchemes"]["session"]["name"],
                         CookieNames.for_base_path(self.base_path).remember_me)

    async def test_the_document_is_valid(self) -> None:
        doc = await self.fetch()
        for ref in refs(doc):
            self.assertIsNotNone(resolve(doc, ref), ref)
        ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
        self.assertEqual(len(ids), len(set(ids)))
        if importlib.util.find_spec("openapi_spec_validator") is None:
            if CI:
                self.fail("openapi-spec-validator is missing (pip install -e '.[test]')")
            raise unittest.SkipTest("openapi-spec-validator is not installed")
        from openapi_spec_validator import validate

        validate(doc)  # raises on any structural error

    def test_declared_parameters_are_read_by_their_modules(self) -> None:
        """A declared parameter whose name appears nowhere in the endpoint's module is a typo."""
        for name, ep in ENDPOINTS.items():
            source = inspect.getsource(inspect.getmodule(ep.handler))  # type: ignore[arg-type]
            for p in ep.params:
                self.assertIn(f'"{p.name}"', source, f"{name}: {p.name}")

    def test_made_from_the_registry_it_is_given(self) -> None:
        table = EndpointTable()

        @table.endpoint("v2/test/only-here", read_only=True, params=(Param("n", "integer", required=True),))
        async def only_here(ctx: Ctx) -> dict[str, Any]:
            """A test endpoint."""
            return {}

        registry = dict(ENDPOINTS)
        registry["v2/test/only-here"] = table.endpoints["v2/test/only-here"]
        doc = document(registry, base_path="/x", names=CookieNames.for_base_path("/x"))
        op = doc["paths"]["/v2/test/only-here"]["get"]
        self.assertEqual(op["summary"], "A test endpoint.")  # from the docstring
        self.assertEqual(op["parameters"][0]["schema"], {"type": "integer"})
        self.assertTrue(op["parameters"][0]["required"])
        self.assertEqual(doc["servers"], [{"url": "/x/api"}])

    async def test_methods_and_no_credentials_needed(self) -> None:
        raw = await raw_http(self.hub.port, raw_get(f"{self.prefix}/api/v2/openapi.json", method="POST"))
        status, headers, body = parse_response(raw)
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], "GET, HEAD")
        self.assertIn("error", json.loads(body))
        raw = await raw_http(self.hub.port, raw_get(f"{self.prefix}/api/v2/openapi.json", method="HEAD"))
        status, headers, body = parse_response(raw)
        self.assertEqual((status, body), (200, b""))
        self.assertGreater(int(headers["content-length"]), 1000)
        # Unknown endpoints keep the JSON error format.
        r = await self.anon.get("openapi.yaml")
        self.assertEqual((r.code, json.loads(r.body)), (404, {"error": "no such API endpoint"}))


class OpenApiUnderBasePathTests(OpenApiTests):
    base_path = "/my/hub"
