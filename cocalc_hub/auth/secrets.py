"""Secrets kept as files in the secrets directory (mode 0600), created on first use."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path


def read_or_create(directory: Path, name: str, nbytes: int = 32) -> str:
    """The secret stored in ``directory/name``; a new random one (base64) if missing.

    Creation is atomic (O_EXCL), so hub processes sharing a data directory agree.
    """
    path = directory / name
    try:
        value = path.read_text("utf-8").strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    try:
        os.link(tmp, path)  # fails if another process created it first
    except FileExistsError:
        value = path.read_text("utf-8").strip()
    finally:
        os.unlink(tmp)
    return value
