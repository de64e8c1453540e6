"""The JSON API's OpenAPI 3.1 document, made from the endpoint registry (``ENDPOINTS``).

Every registered endpoint appears with its methods (POST; GET too if read-only), whether it
needs credentials, its summary, parameters and responses, so the document cannot drift from
what the hub routes. Served at ``BASE_PATH/api/v2/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from cocalc_hub import __version__
from cocalc_hub.auth.cookies import CookieNames
from cocalc_hub.web.api import MAX_BODY, OPENAPI_PATH, Endpoint, Param

ERRORS = {
    400: "Missing or malformed parameters, or a body that is not valid JSON.",
    401: "Not signed in, or the credentials are not valid (any more).",
    403: "Not allowed: not a member or not an administrator, a cookie-authenticated POST without the "
         "session's CSRF token, or a cross-site request.",
    404: "No such project, account or key (or no such endpoint).",
    405: "Wrong method (GET on an endpoint that needs POST).",
    409: "It exists already.",
    413: f"The request body is larger than {MAX_BODY} bytes.",
    415: "The body is neither JSON (application/json) nor a form (application/x-www-form-urlencoded).",
    422: "The command ended with a non-zero exit code and err_on_exit was set.",
    429: "Too many attempts or too many projects; wait and try again.",
    500: "An error on the hub (it is logged).",
    503: "The database or the project manager is unavailable; try again shortly.",
    504: "The command did not finish within its timeout.",
}
POST_ERRORS = (400, 403, 405, 413, 415, 500, 503)
"""What any POST may answer (body, CSRF and same-origin checks, the database)."""
GET_ERRORS = (400, 405, 500, 503)
SUCCESS = {200: "The result.", 201: "Created.", 303: "Sent on to next (a browser's form post)."}


def _schema(param: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": param.type}
    if param.format:
        schema["format"] = param.format
    if param.enum:
        schema["enum"] = list(param.enum)
    if param.description:
        schema["description"] = param.description
    return schema


def _body_schema(params: tuple[Param, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {p.name: _schema(p) for p in params}}
    required = [p.name for p in params if p.required]
    if required:
        schema["required"] = required
    return schema


def _responses(ep: Endpoint, common: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in ep.success:
        if status == 303:
            out["303"] = {"description": SUCCESS[303], "headers": {"Location": {"schema": {"type": "string"}}}}
        else:
            out[str(status)] = {"description": SUCCESS.get(status, "The result."),
                                "content": {"application/json": {"schema": {}}}}
    errors = set(common) | set(ep.errors) | (set() if ep.anonymous else {401})
    for status in sorted(errors):
        out[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    return out


def _operation(path: str, ep: Endpoint, method: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{method}-{path.removeprefix('v2/').replace('/', '-')}",
        "summary": ep.summary or path,
        "tags": [path.removeprefix("v2/").split("/")[0]],
    }
    if ep.anonymous:
        op["security"] = []  # no credentials needed
    elif method == "post":
        op["security"] = [{"bearer": []}, {"basic": []}, {"session": [], "csrf": []}, {"apiKeyCookie": [], "csrf": []}]
    else:
        op["security"] = [{"bearer": []}, {"basic": []}, {"session": []}, {"apiKeyCookie": []}]
    if method == "get":
        op["parameters"] = [{"name": p.name, "in": "query", "required": p.required, "schema": _schema(p),
                             **({"description": p.description} if p.description else {})}
                            for p in ep.params]
        op["responses"] = _responses(ep, GET_ERRORS)
        return op
    if ep.params:
        schema = _body_schema(ep.params)
        op["requestBody"] = {
            "required": any(p.required for p in ep.params),
            "content": {"application/json": {"schema": schema},
                        "application/x-www-form-urlencoded": {"schema": schema}},
        }
    op["responses"] = _responses(ep, POST_ERRORS)
    return op


def _components(names: CookieNames) -> dict[str, Any]:
    error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    return {
        "schemas": {"Error": error},
        "responses": {
            f"E{status}": {"description": text,
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for status, text in ERRORS.items()
        },
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (sk-…) as a Bearer token."},
            "basic": {"type": "http", "scheme": "basic", "description": "An API key as the user name."},
            "session": {"type": "apiKey", "in": "cookie", "name": names.remember_me,
                        "description": "The browser's session cookie (set by auth/sign-in)."},
            "apiKeyCookie": {"type": "apiKey", "in": "cookie", "name": names.api_key,
                             "description": "An API key in a cookie."},
            "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token",
                     "description": "With cookie credentials, a POST needs the session's CSRF token "
                                    "(cookie " + names.csrf + ", or GET auth/csrf)."},
        },
    }


def document(endpoints: dict[str, Endpoint], *, base_path: str, names: CookieNames) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``endpoints`` (the registry) under ``base_path``."""
    prefix = "" if base_path == "/" else base_path
    paths: dict[str, Any] = {}
    for path, ep in sorted(endpoints.items()):
        item = {"post": _operation(path, ep, "post")}
        if ep.read_only:
            item["get"] = _operation(path, ep, "get")
        paths["/" + path] = item
    paths["/" + OPENAPI_PATH] = {"get": {
        "operationId": "get-openapi", "summary": "This document.", "tags": ["meta"], "security": [],
        "responses": {"200": {"description": "The OpenAPI document.", "content": {"application/json": {}}}},
    }}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cocalc-hub JSON API",
            "version": __version__,
            "description": "Parameters go in a JSON (or form) POST body; read-only endpoints also accept GET "
                           "with a query string. Errors are {\"error\": \"...\"} with a real HTTP status.",
        },
        "servers": [{"url": f"{prefix}/api"}],
        "paths": paths,
        "components": _components(names),
    }
