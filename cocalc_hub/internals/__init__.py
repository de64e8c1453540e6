"""The only places that reach into other libraries' private internals; each module says
exactly what it touches and why, and tests/test_internals_*.py fail loudly when an
installed version no longer has it."""
