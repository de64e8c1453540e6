"""The JSON API's endpoints: every module that defines some, listed here in one place.

The order of MODULES (and of the endpoints inside each module) is the order of the OpenAPI
document's paths.
"""

from __future__ import annotations

from types import ModuleType

from cocalc_hub.web.api import Endpoint, EndpointTable, accounts, admin, projects

MODULES: tuple[ModuleType, ...] = (accounts, admin, projects)


def api_endpoints() -> dict[str, Endpoint]:
    """Every endpoint, by path under ``BASE_PATH/api/``; ValueError if two modules claim a path."""
    found: dict[str, Endpoint] = {}
    for module in MODULES:
        table: EndpointTable = module.ENDPOINTS
        for path, ep in table.endpoints.items():
            if path in found:
                raise ValueError(f"two endpoints at {path!r}")
            found[path] = ep
    return found
