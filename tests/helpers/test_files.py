"""Thumbnails with real Pillow images in temporary directories, including a worker killed mid-write."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import files
from helpers.errors import PermanentError

ROOT = Path(__file__).resolve().parents[2]


def test_jpeg_thumbnail_keeps_aspect(tmp_path: Path) -> None:
    source = tmp_path / "photo.jpg"
    Image.new("RGB", (400, 300), (200, 30, 30)).save(source)
    result = files.make_thumbnail(source, 100)
    assert result == {"output": str(tmp_path / "photo.thumb-100.jpg"), "width": 100, "height": 75}
    with Image.open(result["output"]) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (100, 75)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert files.make_thumbnail(source, 100) == result  # a re-run just rewrites it


def test_png_with_alpha_to_jpeg_and_explicit_output(tmp_path: Path) -> None:
    source = tmp_path / "logo.png"
    Image.new("RGBA", (300, 600), (0, 0, 255, 128)).save(source)
    assert files.make_thumbnail(source, 50)["height"] == 100
    out = files.make_thumbnail(source, 30, output=tmp_path / "small.jpg")
    with Image.open(out["output"]) as thumb:
        assert thumb.size == (30, 60) and thumb.mode == "RGB"


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    source = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    Image.new("RGB", (400, 200)).save(source, exif=exif)
    assert files.make_thumbnail(source, 100)["height"] == 200


def test_small_images_are_not_enlarged_unless_asked(tmp_path: Path) -> None:
    source = tmp_path / "tiny.gif"
    Image.new("P", (40, 20)).save(source)
    assert files.make_thumbnail(source, 100) == {"output": str(tmp_path / "tiny.thumb-100.gif"),
                                                 "width": 40, "height": 20}
    assert files.make_thumbnail(source, 100, upscale=True)["height"] == 50


def test_missing_or_broken_input_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="not found"):
        files.make_thumbnail(tmp_path / "nope.jpg", 100)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    with pytest.raises(PermanentError, match="not an image"):
        files.make_thumbnail(text, 100)
    truncated = tmp_path / "cut.png"
    Image.effect_noise((200, 200), 50).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(PermanentError):
        files.make_thumbnail(truncated, 100)
    with pytest.raises(PermanentError):
        files.make_thumbnail(tmp_path, 100)
    for width in (0, -5, 10**6, "100", 1.5, True):
        with pytest.raises(PermanentError, match="width"):
            files.make_thumbnail(text, width)  # type: ignore[arg-type]
    with pytest.raises(PermanentError, match="cannot write"):
        files.make_thumbnail(truncated, 10, output=tmp_path / "x.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.png", "notes.jpg"]


def test_failed_save_leaves_previous_output_and_no_temp(tmp_path: Path) -> None:
    source = tmp_path / "a.png"
    Image.new("RGB", (200, 100), "white").save(source)
    target = tmp_path / "a.thumb-50.png"
    target.write_bytes(b"previous good thumbnail")
    with pytest.raises(KeyError):  # Pillow refuses an unknown format name after the temp file exists
        files.atomic_save(Image.new("RGB", (5, 5)), target, "NO-SUCH-FORMAT")
    assert target.read_bytes() == b"previous good thumbnail"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.thumb-50.png"]


KILL_LOOP = """
import sys
sys.path.insert(0, sys.argv[1])
from helpers import files
print("ready", flush=True)
while True:
    files.make_thumbnail(sys.argv[2], 3000)
"""


def test_kill_during_processing_never_leaves_a_partial_file(tmp_path: Path) -> None:
    # Noise compresses badly, so writing this PNG takes a second or two: the kills land mid-write.
    source = tmp_path / "big.tiff"
    Image.effect_noise((3000, 2000), 80).convert("RGB").save(source)
    target = tmp_path / "big.thumb-3000.png"
    for delay in (0.3, 0.8, 1.3):
        proc = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(ROOT), str(source)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if target.exists():
            with Image.open(target) as image:
                image.load()  # raises on a truncated file
                assert image.size == (3000, 2000)
    leftovers = list(tmp_path.glob(".big.thumb-3000.png.*.tmp"))
    assert leftovers, "no kill landed while the thumbnail was being written"
    # The next run cleans up leftovers old enough to be abandoned, and produces the full thumbnail.
    for leftover in leftovers:
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    files.make_thumbnail(source, 1000, output=target)
    assert list(tmp_path.glob(".big.thumb-3000.png.*.tmp")) == []
    with Image.open(target) as image:
        assert image.size == (1000, 667)
