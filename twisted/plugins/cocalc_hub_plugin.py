"""Makes ``twistd cocalc-hub`` available; the real work lives in cocalc_hub.tap."""

from twisted.application.service import ServiceMaker

cocalcHub = ServiceMaker(
    "CoCalc hub",
    "cocalc_hub.tap",
    "The CoCalc hub: static site, project proxy, local projects and the conat broker.",
    "cocalc-hub",
)
