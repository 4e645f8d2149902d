"""Colour and metadata end to end (issue: photographer-grade results): an Adobe RGB
photo comes out as the expected sRGB, computed here by an independent matrix
implementation; CMYK comes out as RGB; camera, lens and date EXIF survive; colour
preservation modes do what they say on real runs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylefold.cli import main

# Adobe RGB (1998) as its ICC profile states it: D50-adapted colorants, gamma 563/256.
ADOBE_COLORANTS = np.array([[0.60974, 0.20528, 0.14919],
                            [0.31111, 0.62567, 0.06322],
                            [0.01947, 0.06087, 0.74457]])
ADOBE_GAMMA = 563 / 256
# sRGB as LittleCMS's built-in profile states it (D50-adapted colorants).
SRGB_COLORANTS = np.array([[0.436066, 0.385147, 0.143066],
                           [0.222488, 0.716873, 0.060608],
                           [0.013916, 0.097076, 0.714096]])
D50 = (0.9642, 1.0, 0.8249)


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return (b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_)) + ascii_
            + b"\0" * 4 + b"\0" * 4 + b"\0" * 2 + b"\0" + b"\0" * 67)


def adobe_rgb_profile() -> bytes:
    """A minimal ICC v2 matrix/TRC display profile with Adobe RGB's numbers."""
    curve = b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", round(ADOBE_GAMMA * 256)) + b"\0\0"
    tags = [
        (b"desc", _desc_tag("Adobe RGB (1998) test profile")),
        (b"wtpt", _xyz_tag(*D50)),
        (b"rXYZ", _xyz_tag(*ADOBE_COLORANTS[:, 0])),
        (b"gXYZ", _xyz_tag(*ADOBE_COLORANTS[:, 1])),
        (b"bXYZ", _xyz_tag(*ADOBE_COLORANTS[:, 2])),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
        (b"cprt", b"text" + b"\0" * 4 + b"public domain\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + b"RGB " + b"XYZ "
              + b"\0" * 12 + b"acsp" + b"APPL" + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + b"\0" * 4
              + _s15(D50[0]) + _s15(D50[1]) + _s15(D50[2]) + b"\0" * 4 + b"\0" * 44)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def expected_srgb(rgb: tuple[int, int, int]) -> np.ndarray:
    linear = (np.array(rgb) / 255.0) ** ADOBE_GAMMA
    xyz = ADOBE_COLORANTS @ linear
    srgb_linear = np.clip(np.linalg.solve(SRGB_COLORANTS, xyz), 0, 1)
    encoded = np.where(srgb_linear <= 0.0031308, 12.92 * srgb_linear, 1.055 * srgb_linear ** (1 / 2.4) - 0.055)
    return encoded * 255


@pytest.mark.parametrize("adobe", [(128, 128, 128), (180, 120, 90), (60, 140, 200)])
def test_adobe_rgb_input_is_converted_to_the_expected_srgb(tmp_path: Path, adobe: tuple[int, int, int]) -> None:
    from stylefold.media.imageio import load_image

    path = tmp_path / "adobe.tif"
    Image.new("RGB", (8, 8), adobe).save(path, icc_profile=adobe_rgb_profile())
    loaded = load_image(path)
    got = np.array(loaded.image.getpixel((4, 4)), dtype=float)
    assert loaded.icc_description and "Adobe" in loaded.icc_description
    np.testing.assert_allclose(got, expected_srgb(adobe), atol=2.5)
    # A saturated Adobe RGB colour really changes on the way to sRGB (this is no no-op).
    assert np.abs(expected_srgb((60, 140, 200)) - np.array((60, 140, 200))).max() > 5


def test_cmyk_input_comes_out_rgb(tmp_path: Path) -> None:
    from stylefold.media.imageio import load_image

    path = tmp_path / "print.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # pure magenta+yellow: red
    rgb = load_image(path).image.getpixel((4, 4))
    assert rgb[0] > 200 and rgb[1] < 60 and rgb[2] < 60


def _photo_with_exif(path: Path) -> None:
    img = Image.new("RGB", (96, 72), (120, 160, 200))
    exif = Image.Exif()
    exif[0x010F] = "Fujifilm"          # Make
    exif[0x0110] = "X-T5"              # Model
    exif[0x0131] = "Capture One"       # Software of the original
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003] = "2026:06:15 18:42:07"  # DateTimeOriginal
    ifd[0xA434] = "XF23mmF1.4 R LM WR"   # LensModel
    img.save(path, exif=exif.tobytes(), quality=95)


def test_camera_lens_and_date_survive_a_run(tmp_path: Path) -> None:
    photo = tmp_path / "shot.jpg"
    _photo_with_exif(photo)
    out = tmp_path / "out"
    assert main(["run", str(photo), "--preset", "book", "--weights", "random", "--out", str(out),
                 "--set", "steps=2", "--set", "size=48"]) == 0
    exif = Image.open(out / "shot-brushstrokes.jpg").getexif()
    assert exif[0x010F] == "Fujifilm" and exif[0x0110] == "X-T5"
    ifd = exif.get_ifd(0x8769)
    assert ifd[0x9003] == "2026:06:15 18:42:07" and ifd[0xA434] == "XF23mmF1.4 R LM WR"


def _solid(path: Path, rgb: tuple[int, int, int], size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 18, (size, size, 3))
    Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(path)
    return path


def _mean_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=float).reshape(-1, 3).mean(0)


def test_histogram_mode_ends_closer_to_the_photos_colours_than_off(tmp_path: Path) -> None:
    photo = _solid(tmp_path / "blue.png", (60, 90, 190))
    style = _solid(tmp_path / "red.png", (200, 60, 40), seed=1)
    results = {}
    for mode in ("off", "histogram"):
        out = tmp_path / mode
        assert main(["run", str(photo), "--preset", "book", "--weights", "random", "--out", str(out),
                     "--set", f"style={style}", "--set", "steps=60", "--set", "size=48",
                     "--set", f"preserve_color={mode}"]) == 0
        results[mode] = _mean_rgb(out / "blue-red.png")
    target = _mean_rgb(photo)
    distance = {mode: np.linalg.norm(results[mode] - target) for mode in results}
    assert distance["histogram"] < distance["off"]


def test_presets_sheet_renders_each_preset_beside_the_photo(tmp_path: Path) -> None:
    photo = tmp_path / "shot.jpg"
    _photo_with_exif(photo)
    sheet = tmp_path / "sheet.jpg"
    assert main(["presets", "sheet", str(photo), "--weights", "random", "--size", "32", "--steps", "2",
                 "--only", "book,impasto,stained-glass", "--out", str(sheet)]) == 0
    img = Image.open(sheet)
    # original + 3 presets in one row of 4 cells of 32 px (plus padding and captions)
    assert img.width >= 4 * 32 and img.height < 3 * 32 + 80
