"""cocalc-hub: a Twisted reimplementation of the CoCalc hub."""

__version__ = "0.1.0"
