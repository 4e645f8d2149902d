"""Tests for stylefold.imageio: real files written with Pillow into tmp_path."""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, JpegImagePlugin

from stylefold.media.imageio import (
    ImageError,
    ImageTooLarge,
    fit_short_side,
    from_float_array,
    load_image,
    output_extension,
    save_image_atomic,
    to_float_array,
)

SIZE = (8, 6)
MAKE, MODEL, DATETIME = 0x010F, 0x0110, 0x9003
EXIF_IFD = 0x8769
# libtiff records Pillow's "tiff_deflate" as the standard tag value 8, read back by this name.
DEFLATE = ("tiff_deflate", "tiff_adobe_deflate")


def assert_close(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int) -> None:
    assert all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True)), (
        f"{pixel} is not within {tol} of {expected}"
    )


def srgb_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def swapped_primaries_profile() -> bytes:
    """An RGB profile that is sRGB with red and green primaries swapped.

    Built by swapping two entries of the sRGB profile's tag table, so a pixel tagged
    (255, 0, 0) with it really is sRGB green: proof the conversion is applied.
    """
    data = bytearray(srgb_bytes())
    count = struct.unpack(">I", data[128:132])[0]
    entries = {bytes(data[132 + 12 * i:136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, green = entries[b"rXYZ"], entries[b"gXYZ"]
    data[red + 4:red + 12], data[green + 4:green + 12] = (
        data[green + 4:green + 12], data[red + 4:red + 12])
    data[84:100] = bytes(16)  # the profile ID (an MD5) no longer matches; zero means "unset"
    return bytes(data)


def camera_exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE] = "Fujifilm"
    exif[MODEL] = "X-T5"
    exif.get_ifd(EXIF_IFD)[DATETIME] = "2024:05:01 10:20:30"
    if orientation is not None:
        exif[0x0112] = orientation
    return exif


# ---------------------------------------------------------------- modes


def _palette_image() -> Image.Image:
    image = Image.new("P", SIZE, 0)
    image.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    return image


MODE_CASES = {
    # mode: (image, file suffix, expected RGB, tolerance)
    "1": (Image.new("1", SIZE, 1), ".png", (255, 255, 255), 0),
    "L": (Image.new("L", SIZE, 100), ".png", (100, 100, 100), 0),
    "LA": (Image.new("LA", SIZE, (100, 255)), ".png", (100, 100, 100), 0),
    "P": (_palette_image(), ".png", (10, 200, 30), 0),
    "RGB": (Image.new("RGB", SIZE, (10, 200, 30)), ".png", (10, 200, 30), 0),
    "RGBA": (Image.new("RGBA", SIZE, (10, 200, 30, 255)), ".png", (10, 200, 30), 0),
    "I;16": (Image.new("I;16", SIZE, 0x6400), ".png", (100, 100, 100), 0),
    "I;16B": (Image.new("I;16B", SIZE, 0x6400), ".tif", (100, 100, 100), 0),
    "I": (Image.new("I", SIZE, 100 << 24), ".tif", (100, 100, 100), 0),
    "F": (Image.new("F", SIZE, 0.4), ".tif", (102, 102, 102), 0),
    "CMYK": (Image.new("CMYK", SIZE, (255, 0, 0, 0)), ".tif", (0, 255, 255), 0),
    "YCbCr": (Image.new("YCbCr", SIZE, (100, 128, 128)), ".tif", (100, 100, 100), 2),
}


@pytest.mark.parametrize("mode", list(MODE_CASES))
def test_every_mode_loads_as_rgb(tmp_path: Path, mode: str) -> None:
    image, suffix, expected, tol = MODE_CASES[mode]
    path = tmp_path / f"photo{suffix}"
    image.save(path)

    loaded = load_image(path)

    assert loaded.source_mode == mode
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == loaded.source_size == SIZE
    assert_close(loaded.image.getpixel((3, 2)), expected, tol)
    assert loaded.alpha_dropped is False


def test_sixteen_bit_ramp_scales_by_bit_depth(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 512).astype(np.uint16).reshape(1, 512).repeat(4, axis=0)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)

    row = np.asarray(load_image(path).image)[0, :, 0].astype(int)

    assert np.all(np.diff(row) >= 0)
    assert row[0] == 0 and row[-1] == 255
    assert np.array_equal(row, ramp[0] >> 8)
    assert np.mean(row == 255) < 0.01  # a clip to 255 would make nearly all of it white


def test_sixteen_bit_data_in_mode_i_is_not_clipped(tmp_path: Path) -> None:
    # Pillow opens a 16-bit PGM as mode "I", which does not state the bit depth.
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(1, 256)
    path = tmp_path / "ramp.pgm"
    Image.fromarray(ramp).save(path)

    loaded = load_image(path)
    row = np.asarray(loaded.image)[0, :, 0].astype(int)

    assert loaded.source_mode == "I"
    assert np.array_equal(row, ramp[0] >> 8)


def test_32_bit_tiff_scales_by_its_declared_depth(tmp_path: Path) -> None:
    # Small values in a 32-bit file are dark, not 16-bit data: the TIFF says so.
    path = tmp_path / "dark.tif"
    Image.new("I", SIZE, 0xFF00).save(path)
    assert load_image(path).image.getpixel((0, 0)) == (0, 0, 0)


# ---------------------------------------------------------------- alpha


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", SIZE, (10, 200, 30, 255))
    image.putpixel((0, 0), (10, 200, 30, 0))
    image.putpixel((1, 0), (0, 0, 0, 128))
    path = tmp_path / "product.png"
    image.save(path)

    loaded = load_image(path)

    assert loaded.alpha_dropped is True
    assert loaded.image.getpixel((0, 0)) == (255, 255, 255)
    assert_close(loaded.image.getpixel((1, 0)), (127, 127, 127), 1)
    assert loaded.image.getpixel((5, 5)) == (10, 200, 30)


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    image = _palette_image()
    image.putpixel((0, 0), 1)
    path = tmp_path / "logo.png"
    image.save(path, transparency=1)

    loaded = load_image(path)

    assert loaded.source_mode == "P"
    assert loaded.alpha_dropped is True
    assert loaded.image.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.image.getpixel((4, 4)) == (10, 200, 30)


# ---------------------------------------------------------------- EXIF


def test_orientation_is_applied_and_reset(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    path = tmp_path / "portrait.jpg"
    image.save(path, exif=camera_exif(orientation=6), quality=95)

    loaded = load_image(path)

    assert loaded.image.size == loaded.source_size == (20, 40)
    # Orientation 6 means "rotate 90° clockwise to display": the left half goes on top.
    assert_close(loaded.image.getpixel((10, 5)), (255, 0, 0), 10)
    assert_close(loaded.image.getpixel((10, 35)), (0, 0, 255), 10)
    assert loaded.exif is not None
    exif = Image.Exif()
    exif.load(loaded.exif)
    assert exif[0x0112] == 1
    assert exif[MAKE] == "Fujifilm"


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp"])
def test_camera_exif_survives_load_and_save(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / "in.jpg"
    Image.new("RGB", (16, 12), (90, 90, 90)).save(source, exif=camera_exif(orientation=3))
    loaded = load_image(source)
    out = tmp_path / f"out{suffix}"

    save_image_atomic(loaded.image, out, exif=loaded.exif)

    with Image.open(out) as result:
        exif = result.getexif()
        assert exif[MAKE] == "Fujifilm"
        assert exif[MODEL] == "X-T5"
        assert exif.get(0x0112) == 1
        assert exif.get_ifd(EXIF_IFD)[DATETIME] == "2024:05:01 10:20:30"


def test_tiff_layout_tags_are_not_carried_as_exif(tmp_path: Path) -> None:
    path = tmp_path / "scan.tif"
    Image.new("RGB", SIZE).save(path, exif=camera_exif())

    loaded = load_image(path)

    assert loaded.exif is not None
    exif = Image.Exif()
    exif.load(loaded.exif)
    assert exif[MAKE] == "Fujifilm"
    assert 273 not in exif and 256 not in exif  # StripOffsets, ImageWidth


def test_image_without_exif_has_none(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", SIZE).save(path)
    assert load_image(path).exif is None


# ---------------------------------------------------------------- colour


def test_embedded_rgb_profile_is_converted_to_srgb(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", SIZE, (255, 0, 0)).save(path, icc_profile=swapped_primaries_profile())

    loaded = load_image(path)

    assert_close(loaded.image.getpixel((0, 0)), (0, 255, 0), 2)
    assert loaded.icc_description


def test_embedded_srgb_profile_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = tmp_path / "srgb.png"
    Image.fromarray(pixels).save(path, icc_profile=srgb_bytes())

    loaded = load_image(path)

    diff = np.abs(np.asarray(loaded.image).astype(int) - pixels.astype(int))
    assert diff.max() <= 1
    assert loaded.icc_description == "sRGB built-in"


def test_untagged_image_has_no_icc_description(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", SIZE).save(path)
    assert load_image(path).icc_description is None


def test_cmyk_jpeg_without_profile_is_converted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", SIZE, (255, 0, 0, 0)).save(path, quality=95)

    with caplog.at_level(logging.WARNING, logger="stylefold.media.imageio"):
        loaded = load_image(path)

    assert loaded.source_mode == "CMYK"
    assert_close(loaded.image.getpixel((3, 3)), (0, 255, 255), 8)
    assert "print.jpg" in caplog.text and "CMYK" in caplog.text


def test_broken_icc_profile_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "odd.png"
    Image.new("RGB", SIZE, (10, 20, 30)).save(path, icc_profile=b"not a profile")

    with caplog.at_level(logging.WARNING, logger="stylefold.media.imageio"):
        loaded = load_image(path)

    assert loaded.image.getpixel((0, 0)) == (10, 20, 30)
    assert loaded.icc_description is None
    assert "odd.png" in caplog.text


# ---------------------------------------------------------------- bad files


def test_truncated_jpeg_is_unreadable(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])

    with pytest.raises(ImageError) as caught:
        load_image(path)

    assert caught.value.kind == "unreadable_image"
    assert "cut.jpg" in str(caught.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_named_jpg_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n")
    with pytest.raises(ImageError, match="notes.jpg"):
        load_image(path)


def test_empty_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError, match="empty.png"):
        load_image(path)


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="gone.jpg"):
        load_image(tmp_path / "gone.jpg")


def test_pixel_limit_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(self) or real_load(self))

    with pytest.raises(ImageTooLarge) as caught:
        load_image(path, max_pixels=5000)

    assert caught.value.kind == "too_large"
    assert "10,000" in str(caught.value) and "5,000" in str(caught.value)
    assert decoded == []


def test_huge_dimensions_are_too_large(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(path)  # a few kB on disk, 100 Mpx decoded
    max_before = Image.MAX_IMAGE_PIXELS
    filters_before = list(warnings.filters)

    with pytest.raises(ImageTooLarge, match="50,000,000"):
        load_image(path, max_pixels=50_000_000)

    assert Image.MAX_IMAGE_PIXELS == max_before
    assert warnings.filters == filters_before


def test_pillow_bomb_warning_becomes_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "wide.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # warn above 6000, error above 12000

    with pytest.raises(ImageTooLarge):
        load_image(path, max_pixels=6000)


# ---------------------------------------------------------------- multi-frame


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", SIZE, colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".tif"])
def test_multi_frame_files_use_the_first_frame(tmp_path: Path, suffix: str) -> None:
    first, *rest = _frames()
    path = tmp_path / f"anim{suffix}"
    first.save(path, save_all=True, append_images=rest, duration=100, loop=0)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 3

    loaded = load_image(path)

    assert_close(loaded.image.getpixel((2, 2)), (255, 0, 0), 6)


# ---------------------------------------------------------------- resizing and arrays


def test_fit_short_side_sizes() -> None:
    assert fit_short_side(Image.new("RGB", (200, 300)), 128).size == (128, 192)
    assert fit_short_side(Image.new("RGB", (300, 200)), 128).size == (192, 128)
    assert fit_short_side(Image.new("RGB", (129, 200)), 128).size == (128, 198)


def test_fit_short_side_never_enlarges() -> None:
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (60, 100, 3), np.uint8))
    result = fit_short_side(image, 128)
    assert result.size == (100, 60)
    assert np.array_equal(np.asarray(result), np.asarray(image))


def test_fit_short_side_matches_torchvision_resize() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(3)
    for shape in ((300, 200, 3), (200, 300, 3), (517, 389, 3)):
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        expected = transforms.Resize(128)(image)
        result = fit_short_side(image, 128)
        assert result.size == expected.size
        assert np.array_equal(np.asarray(result), np.asarray(expected))


def test_float_array_round_trip() -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    array = to_float_array(Image.fromarray(pixels))

    assert array.dtype == np.float32 and array.shape == (5, 7, 3)
    assert np.allclose(array, pixels / 255.0)
    assert np.array_equal(np.asarray(from_float_array(array)), pixels)


def test_from_float_array_clamps_and_rounds() -> None:
    array = np.array([[[-0.5, 1.5, np.nan], [0.5, 1 / 255 * 0.6, 1.0]]], dtype=np.float32)
    image = from_float_array(array)
    assert image.mode == "RGB"
    assert np.asarray(image).tolist() == [[[0, 255, 0], [128, 1, 255]]]


def test_array_helpers_reject_wrong_shapes() -> None:
    with pytest.raises(ValueError):
        to_float_array(Image.new("L", SIZE))
    with pytest.raises(ValueError):
        from_float_array(np.zeros((4, 4), dtype=np.float32))


# ---------------------------------------------------------------- saving


@pytest.mark.parametrize(
    ("source", "fmt", "expected"),
    [
        (".jpg", "same", ".jpg"), (".JPEG", "same", ".jpg"), (".png", "same", ".png"),
        (".tif", "same", ".tif"), (".TIFF", "same", ".tif"), (".webp", "same", ".webp"),
        (".bmp", "same", ".png"), (".png", "jpeg", ".jpg"), (".jpg", "png", ".png"),
        (".jpg", "tiff", ".tif"), (".bmp", "webp", ".webp"),
    ],
)
def test_output_extension(source: str, fmt: str, expected: str) -> None:
    assert output_extension(source, fmt) == expected


def test_output_extension_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        output_extension(".gif", "same")
    with pytest.raises(ValueError):
        output_extension(".jpg", "heic")


@pytest.mark.parametrize(("suffix", "fmt"),
                         [(".jpg", "JPEG"), (".png", "PNG"), (".tif", "TIFF"), (".webp", "WEBP")])
def test_save_writes_format_with_srgb_profile_and_no_temp(
    tmp_path: Path, suffix: str, fmt: str
) -> None:
    out = tmp_path / f"result{suffix}"
    save_image_atomic(Image.new("RGB", (32, 24), (200, 100, 50)), out, quality=95)

    assert sorted(os.listdir(tmp_path)) == [out.name]
    with Image.open(out) as result:
        assert result.format == fmt and result.size == (32, 24)
        profile = ImageCms.ImageCmsProfile(io.BytesIO(result.info["icc_profile"]))
        assert "sRGB" in ImageCms.getProfileDescription(profile)
        assert_close(result.convert("RGB").getpixel((5, 5)), (200, 100, 50), 4)
        if fmt == "TIFF":
            assert result.info["compression"] in DEFLATE


def test_tiff_with_exif_sub_ifd_is_written_uncompressed(tmp_path: Path) -> None:
    # Pillow's libtiff writer rejects the Exif IFD pointer; the metadata wins.
    out = tmp_path / "result.tif"
    save_image_atomic(Image.new("RGB", SIZE), out, exif=camera_exif().tobytes())
    with Image.open(out) as result:
        assert result.info["compression"] == "raw"
        assert result.getexif().get_ifd(EXIF_IFD)[DATETIME] == "2024:05:01 10:20:30"


def test_tiff_with_only_ifd0_exif_is_compressed(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[MAKE] = "Fujifilm"
    out = tmp_path / "result.tif"
    save_image_atomic(Image.new("RGB", SIZE), out, exif=exif.tobytes())
    with Image.open(out) as result:
        assert result.info["compression"] in DEFLATE
        assert result.getexif()[MAKE] == "Fujifilm"


def test_save_uses_hidden_temp_name_in_same_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def recording_replace(src: str | Path, dst: str | Path) -> None:
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    out = tmp_path / "result.png"

    save_image_atomic(Image.new("RGB", SIZE), out)

    [(src, dst)] = renames
    assert dst == out and src.parent == tmp_path
    assert src.name.startswith(".") and src.name.endswith(".tmp")


def test_jpeg_chroma_subsampling_follows_quality(tmp_path: Path) -> None:
    image = Image.new("RGB", (32, 32), (10, 120, 240))
    save_image_atomic(image, tmp_path / "high.jpg", quality=95)
    save_image_atomic(image, tmp_path / "low.jpg", quality=80)
    with Image.open(tmp_path / "high.jpg") as high, Image.open(tmp_path / "low.jpg") as low:
        assert JpegImagePlugin.get_sampling(high) == 0
        assert JpegImagePlugin.get_sampling(low) == 2


def test_save_rejects_unknown_suffix_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="xyz"):
        save_image_atomic(Image.new("RGB", SIZE), tmp_path / "result.xyz")
    assert os.listdir(tmp_path) == []


def test_save_into_missing_directory_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        save_image_atomic(Image.new("RGB", SIZE), tmp_path / "gone" / "result.png")
    assert os.listdir(tmp_path) == []


def test_save_failure_midway_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_save(self: Image.Image, fp: io.BufferedWriter, *args: object,
                     **kwargs: object) -> None:
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_image_atomic(Image.new("RGB", SIZE), tmp_path / "result.png")
    assert os.listdir(tmp_path) == []


def test_save_rejects_bad_quality(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_image_atomic(Image.new("RGB", SIZE), tmp_path / "result.jpg", quality=0)
    assert os.listdir(tmp_path) == []
