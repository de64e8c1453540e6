"""Base class for the hub's own leaf resources: method dispatch with our error pages."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from cocalc_hub.web.errors import error_page, json_error


class HubResource(Resource):
    """A leaf resource; unknown methods get 405 with an Allow header (JSON or HTML)."""

    isLeaf = True
    json_errors = False

    def allowed_methods(self) -> list[str]:
        names = {name[len("render_"):] for name in dir(self) if name.startswith("render_")}
        if "GET" in names:
            names.add("HEAD")
        return sorted(names)

    def render(self, request: Request) -> Any:
        method = request.method.decode("latin-1")
        handler = getattr(self, "render_" + method, None) if method.isalpha() and method.isupper() else None
        if handler is None and method == "HEAD":
            handler = getattr(self, "render_GET", None)
        if handler is None:
            request.setHeader(b"allow", ", ".join(self.allowed_methods()).encode("ascii"))
            if self.json_errors:
                return json_error(request, 405, "method not allowed")
            return error_page(request, 405, "This method is not allowed here.")
        return handler(request)
