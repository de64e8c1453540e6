"""Pluggable storage for the conat persist service (spec §6.4, §6.5).

``base`` defines the interface, ``common`` the semantics every backend shares, and
``sqlite``, ``memory`` and ``postgres`` the three backends.
"""
