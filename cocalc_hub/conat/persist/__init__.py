"""Conat persist: durable streams and key-value stores served over conat sockets (spec §6)."""
