"""``python -m cocalc_hub.project``: what the hub's project manager runs as a project."""

import os
import sys

from cocalc_hub.project.server import run

if __name__ == "__main__":
    sys.exit(run(dict(os.environ)))
