"""``cocalc-hub [options]``: a thin alias of ``twistd -n --pidfile= cocalc-hub [options]``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from twisted.scripts.twistd import run

    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "cocalc-hub", *args]
    run()


if __name__ == "__main__":
    main()
