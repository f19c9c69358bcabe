"""File checksums."""
from __future__ import annotations

import hashlib

CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    """SHA-256 of a file, read in chunks so large files use little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
