"""The one check every file task makes: a path is used only when it resolves inside the allowed directories.

A job's arguments come from whoever can submit (or, without a signing key, write to Redis); without this check a
file task reads or writes anything the worker's user can (`/etc/shadow`, `../../`). The path is resolved --
`..` and every symlink, the file's own included -- and must then lie under one of the roots (resolved too).
A relative path starts in the first root. A refusal is a PermanentError: retrying cannot make it allowed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from helpers.errors import PermanentError


def confine(path: str | os.PathLike, roots: Sequence[str | os.PathLike], what: str = "path") -> Path:
    """`path` resolved, if it lies inside one of `roots`; else PermanentError naming NIGHTSHIFT_FILES_ROOT."""
    if not roots:
        raise PermanentError("no directory is allowed for file tasks: set NIGHTSHIFT_FILES_ROOT")
    if not isinstance(path, (str, os.PathLike)) or not str(path) or "\0" in str(path):
        raise PermanentError(f"{what} must be a non-empty file path, not {path!r}")
    real_roots = [Path(root).resolve() for root in roots]
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = real_roots[0] / candidate
    resolved = candidate.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in real_roots):
        allowed = os.pathsep.join(str(root) for root in real_roots)
        raise PermanentError(f"{what} {str(path)!r} is outside NIGHTSHIFT_FILES_ROOT ({allowed}); refused")
    return resolved
