"""The JSON API's OpenAPI document: served by a real hub, made from the endpoint registry."""

from __future__ import annotations

import importlib.util
import inspect
import json
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.auth.cookies import CookieNames
from cocalc_hub.web.api import ENDPOINTS, Ctx, Param, endpoint
from cocalc_hub.web.api.openapi import document
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
        registry = dict(ENDPOINTS)

        @endpoint("v2/test/only-here", read_only=True, params=(Param("n", "integer", required=True),))
        async def only_here(ctx: Ctx) -> dict[str, Any]:
            """A test endpoint."""
            return {}

        try:
            registry["v2/test/only-here"] = ENDPOINTS["v2/test/only-here"]
            doc = document(registry, base_path="/x", names=CookieNames.for_base_path("/x"))
        finally:
            del ENDPOINTS["v2/test/only-here"]
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
