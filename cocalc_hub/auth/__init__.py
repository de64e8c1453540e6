"""Who is calling: password hashes, remember_me sessions, API keys, throttling, CSRF."""
