"""``python -m cocalc_hub.project_agent``: what the hub's project manager runs as a project."""

import os
import sys

from cocalc_hub.project_agent.main import run

if __name__ == "__main__":
    sys.exit(run(dict(os.environ)))
