"""Thumbnails with Pillow, written so that no reader ever sees a half-written file.

The image is written to a temporary file in the destination's directory, flushed to disk, then renamed over
the destination with `os.replace` (atomic on one file system). A worker killed mid-way leaves at most a
hidden temporary file, which the next run for the same destination removes.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from helpers.errors import PermanentError

MAX_WIDTH = 10_000
STALE_TEMP_SECONDS = 600
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF"}


def thumbnail_path(path: str | Path, width: int) -> Path:
    """Default destination: `photo.jpg` -> `photo.thumb-200.jpg` next to it (GIF/TIFF/etc. become PNG)."""
    path = Path(path)
    suffix = path.suffix.lower() if path.suffix.lower() in _FORMATS else ".png"
    return path.with_name(f"{path.stem}.thumb-{width}{suffix}")


def make_thumbnail(path: str | Path, width: int, output: str | Path | None = None, quality: int = 85,
                   upscale: bool = False) -> dict[str, Any]:
    """Write a `width`-pixel-wide copy of the image at `path` (aspect kept); returns {"output", "width", "height"}.

    A missing file or one that is not a readable image raises PermanentError: retrying cannot fix it.
    Smaller images are not enlarged unless `upscale`.
    """
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise PermanentError(f"width must be an integer from 1 to {MAX_WIDTH}, not {width!r}")
    source = Path(path)
    target = Path(output) if output is not None else thumbnail_path(source, width)
    fmt = _FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise PermanentError(f"cannot write {target.suffix or 'extension-less'} files; use one of "
                             + ", ".join(sorted(_FORMATS)))
    if not source.exists():
        raise PermanentError(f"input file not found: {source}")
    if not source.is_file():
        raise PermanentError(f"input is not a file: {source}")
    if not target.parent.is_dir():
        raise PermanentError(f"output directory does not exist: {target.parent}")
    _remove_stale_temps(target)

    try:
        with Image.open(source) as image:
            image = ImageOps.exif_transpose(image)
            if image.width <= width and not upscale:
                size = image.size
            else:
                size = (width, max(1, round(image.height * width / image.width)))
            thumb = image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image.copy()
    except FileNotFoundError:
        raise PermanentError(f"input file not found: {source}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise PermanentError(f"{source} is not an image Pillow can read: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise PermanentError(f"{source} could not be decoded: {exc}") from None

    if fmt == "JPEG" and thumb.mode not in ("RGB", "L"):
        thumb = thumb.convert("RGB")
    options: dict[str, Any] = {"quality": quality, "optimize": True} if fmt in ("JPEG", "WEBP") else {}
    atomic_save(thumb, target, fmt, **options)
    return {"output": str(target), "width": thumb.width, "height": thumb.height}


def atomic_save(image: Image.Image, target: Path, fmt: str, **options: Any) -> None:
    """Save through a temporary file in the same directory, fsync it, then os.replace it into place."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format=fmt, **options)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _remove_stale_temps(target: Path) -> None:
    """Delete temporary files a killed earlier run left for `target` (old enough not to be in use)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except FileNotFoundError:
            pass
