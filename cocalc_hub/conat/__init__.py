"""Conat: CoCalc's message bus (broker, client, persistence)."""
