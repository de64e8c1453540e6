"""The hub's services on the conat bus: the hub API, sign-in and watchers of the broker,
the persist server's wiring (:mod:`cocalc_hub.conat` is the library they use)."""
