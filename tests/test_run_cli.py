"""``stylefold run`` end to end: real photos in ``tmp_path``, random weights, tiny sizes,
and the files of SPEC §5 checked byte by byte where it matters."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms

from stylefold.cli import main
from stylefold.media.imageio import fit_short_side, load_image
from stylefold.presets import PresetLibrary, builtin_dir

from .conftest import write_photo, write_texture

CSV_HEADER = "step,style_loss,content_loss,tv_loss,total_loss,elapsed_s"
BASE = "photo-brushstrokes"  # photo.jpg through the book preset's style
EXIF_MAKE, EXIF_MODEL, EXIF_ORIENTATION = 0x010F, 0x0110, 0x0112


# ---------------------------------------------------------------- helpers


def isolate(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Run in ``folder`` with no STYLEFOLD_* variable of the developer's shell."""
    for var in ("STYLEFOLD_ROOT", "STYLEFOLD_CONFIG", "STYLEFOLD_DEVICE", "STYLEFOLD_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(folder)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)


def run(*images: Path | str, sets: tuple[str, ...] = (), preset: str = "book", out: str = "out",
        weights: str | Path | None = "random", device: str | None = "cpu", extra: tuple[str, ...] = ()) -> int:
    """``stylefold run`` on the CPU at 32 px for 2 steps unless ``sets`` says otherwise;
    ``weights``/``device`` None leave the option out (environment or config decide)."""
    argv = ["run", *map(str, images), "--preset", preset, "--out", out, *extra]
    if device is not None:
        argv += ["--device", device]
    if weights is not None:
        argv += ["--weights", str(weights)]
    for item in ("size=32", "steps=2", *sets):
        argv += ["--set", item]
    return main(argv)


def files_under(folder: Path) -> set[str]:
    """Every file below ``folder`` (hidden temp files included), relative, as strings."""
    if not folder.exists():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def read_report(out: Path, base: str = BASE) -> dict[str, Any]:
    return json.loads((out / "logs" / f"{base}.json").read_text(encoding="utf-8"))


def read_losses(out: Path, base: str = BASE) -> tuple[str, list[dict[str, float]]]:
    text = (out / "logs" / f"{base}.losses.csv").read_text(encoding="utf-8")
    header = text.splitlines()[0]
    rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]
    return header, rows


def image_format(path: Path) -> str:
    with Image.open(path) as im:
        im.verify()
        return str(im.format)


def icc_description(image: Image.Image) -> str:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
    return ImageCms.getProfileDescription(profile)


def write_rotated_jpeg(path: Path) -> Path:
    """A 96x72 JPEG stored sideways (EXIF Orientation 6): upright it is 72x96 portrait.

    A red block fills the stored top-left corner; upright, that corner is the top-right.
    """
    pixels = np.full((72, 96, 3), 40, dtype=np.uint8)
    pixels[:24, :32] = (230, 20, 20)
    exif = Image.Exif()
    exif[EXIF_MAKE] = "StyleCam"
    exif[EXIF_MODEL] = "Sideways 6"
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    return path


def write_blend_preset(folder: Path) -> Path:
    write_texture(folder / "a.png", size=40, seed=5)
    write_texture(folder / "b.png", size=40, seed=6)
    preset = {"extends": "book", "style": [{"path": "a.png", "weight": 1}, {"path": "b.png", "weight": 3}]}
    path = folder / "blend.json"
    path.write_text(json.dumps(preset), encoding="utf-8")
    return path


# ---------------------------------------------------------------- one run, all of SPEC §5


@dataclass(frozen=True)
class BookRun:
    rc: int
    stdout: str
    folder: Path
    photo: Path

    @property
    def out(self) -> Path:
        return self.folder / "out"


@pytest.fixture(scope="module")
def book_run(tmp_path_factory: pytest.TempPathFactory) -> BookRun:
    """``stylefold run photo.jpg --preset book --set steps=3 --set size=48``, once per module."""
    folder = tmp_path_factory.mktemp("book_run")
    photo = write_photo(folder / "photo.jpg")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, folder)
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            rc = run(photo, sets=("steps=3", "size=48"))
    return BookRun(rc, stdout.getvalue(), folder, photo)


def test_run_succeeds_and_prints_the_result(book_run: BookRun) -> None:
    assert book_run.rc == 0
    assert book_run.stdout.splitlines() == [str(book_run.folder / "out" / f"{BASE}.jpg")]


def test_run_writes_exactly_the_spec_files(book_run: BookRun) -> None:
    # No progress sheet (snapshot_every is 0) and no temp file left behind.
    assert files_under(book_run.out) == {
        f"{BASE}.jpg", f"logs/{BASE}.losses.csv", f"logs/{BASE}.json", f"logs/{BASE}.losses.png",
    }


def test_result_is_working_size_srgb_jpeg(book_run: BookRun) -> None:
    path = book_run.out / f"{BASE}.jpg"
    assert image_format(path) == "JPEG"
    with Image.open(path) as result:
        assert result.size == (64, 48)  # 96x72, shorter side to 48
        assert result.mode == "RGB"
        assert "sRGB" in icc_description(result)


def test_loss_csv_has_one_row_per_step(book_run: BookRun) -> None:
    header, rows = read_losses(book_run.out)
    assert header == CSV_HEADER
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        parts = row["style_loss"] + row["content_loss"] + row["tv_loss"]
        assert math.isclose(row["total_loss"], parts, rel_tol=1e-5, abs_tol=1e-9), row
        assert row["style_loss"] > 0 and row["content_loss"] >= 0
        assert row["tv_loss"] == 0  # book: tv_weight 0
        assert row["elapsed_s"] >= 0
    assert [r["elapsed_s"] for r in rows] == sorted(r["elapsed_s"] for r in rows)


def test_report_describes_the_job(book_run: BookRun) -> None:
    import torch

    report = read_report(book_run.out)
    assert report["status"] == "done"
    expected = PresetLibrary.default().load_file(builtin_dir() / "book.json", {"steps": 3, "size": 48})
    assert report["preset"]["effective"] == expected.effective()
    assert report["preset"]["effective"]["steps"] == 3
    assert report["preset"]["source"] == "book"
    assert report["input"]["sha256"] == hashlib.sha256(book_run.photo.read_bytes()).hexdigest()
    assert report["input"]["size"] == [96, 72]
    assert (book_run.folder / report["output"]["path"]).resolve() == (book_run.out / f"{BASE}.jpg").resolve()
    assert report["output"]["size"] == [64, 48]
    assert report["device"] == "cpu"
    assert report["precision"] == "fp32"
    assert report["steps_run"] == 3
    assert report["seconds"]["total"] >= report["seconds"]["engine"] >= 0
    assert report["versions"]["torch"] == torch.__version__
    assert report["weights"] == {"source": "random", "name": "random(seed=0)", "sha256": None}
    [style] = report["styles"]
    assert Path(style["path"]).name == "brushstrokes.png"
    assert style["sha256"] == hashlib.sha256(Path(style["path"]).read_bytes()).hexdigest()
    _, rows = read_losses(book_run.out)
    assert report["final_losses"]["total_loss"] == pytest.approx(rows[-1]["total_loss"])


def test_loss_plot_is_a_png(book_run: BookRun) -> None:
    path = book_run.out / "logs" / f"{BASE}.losses.png"
    assert image_format(path) == "PNG"
    with Image.open(path) as plot:
        assert min(plot.size) >= 100


def test_snapshot_every_writes_a_progress_sheet(tmp_path: Path, photo: Path) -> None:
    assert run(photo, sets=("snapshot_every=1",)) == 0
    sheet = tmp_path / "out" / "logs" / f"{BASE}.progress.jpg"
    assert image_format(sheet) == "JPEG"
    assert Path(read_report(tmp_path / "out")["logs"]["progress"]).resolve() == sheet.resolve()


# ---------------------------------------------------------------- the result image


@pytest.mark.parametrize(("size", "expected"), [(48, (64, 48)), (500, (96, 72))], ids=["shrunk", "never-enlarged"])
def test_result_has_the_working_size(tmp_path: Path, photo: Path, size: int, expected: tuple[int, int]) -> None:
    assert run(photo, sets=(f"size={size}",)) == 0
    with Image.open(tmp_path / "out" / f"{BASE}.jpg") as result:
        assert result.size == expected


def test_exif_is_carried_over_and_orientation_applied(tmp_path: Path) -> None:
    photo = write_rotated_jpeg(tmp_path / "photo.jpg")
    # Started from the content with a negligible step, the result keeps the photo's layout.
    assert run(photo, sets=("size=48", "init=content", "lr=1e-6")) == 0
    with Image.open(tmp_path / "out" / f"{BASE}.jpg") as result:
        exif = result.getexif()
        assert (exif.get(EXIF_MAKE), exif.get(EXIF_MODEL)) == ("StyleCam", "Sideways 6")
        assert exif.get(EXIF_ORIENTATION) == 1
        assert result.size == (48, 64)  # portrait: upright 72x96, shorter side to 48
        assert "sRGB" in icc_description(result)
        pixels = np.asarray(result.convert("RGB"), dtype=int)
    top_right, top_left = pixels[4:16, 36:44].mean(axis=(0, 1)), pixels[4:16, 4:12].mean(axis=(0, 1))
    assert top_right[0] > 180 and top_right[1] < 80, top_right  # the red block, rotated
    assert top_left[0] < 80, top_left
    assert read_report(tmp_path / "out")["input"]["size"] == [72, 96]


def test_second_run_never_overwrites(tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run(photo) == 0
    first = (out / f"{BASE}.jpg").read_bytes()
    first_report = (out / "logs" / f"{BASE}.json").read_bytes()
    assert run(photo, sets=("steps=3",)) == 0
    assert (out / f"{BASE}.jpg").read_bytes() == first
    assert (out / "logs" / f"{BASE}.json").read_bytes() == first_report
    assert files_under(out) == {
        name for base in (BASE, f"{BASE}-2")
        for name in (f"{base}.jpg", f"logs/{base}.losses.csv", f"logs/{base}.json", f"logs/{base}.losses.png")
    }
    assert read_report(out, f"{BASE}-2")["steps_run"] == 3
    assert read_report(out, f"{BASE}-2")["output"]["base"] == f"{BASE}-2"
    assert capsys.readouterr().out.splitlines() == [str(out / f"{b}.jpg") for b in (BASE, f"{BASE}-2")]


@pytest.mark.parametrize(("suffix", "sets", "ext", "fmt"), [
    (".jpg", ("output.format=png",), ".png", "PNG"),
    (".bmp", (), ".png", "PNG"),
    (".png", ("output.format=tiff",), ".tif", "TIFF"),
    (".JPEG", (), ".jpg", "JPEG"),
], ids=["jpg-to-png", "bmp-same", "png-to-tiff", "upper-case-jpeg-same"])
def test_output_format(tmp_path: Path, suffix: str, sets: tuple[str, ...], ext: str, fmt: str) -> None:
    photo = write_photo(tmp_path / f"photo{suffix}")
    assert run(photo, sets=sets) == 0
    assert files_under(tmp_path / "out") >= {f"{BASE}{ext}"}
    assert not [f for f in files_under(tmp_path / "out") if "/" not in f and f != f"{BASE}{ext}"]
    assert image_format(tmp_path / "out" / f"{BASE}{ext}") == fmt


# ---------------------------------------------------------------- weights


def test_weights_file(tmp_path: Path, photo: Path, weights_file: Path) -> None:
    assert run(photo, weights=weights_file) == 0
    weights = read_report(tmp_path / "out")["weights"]
    assert weights["source"] == "file"
    assert weights["sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert weights["name"] == str(weights_file)


def test_weights_file_that_is_not_weights(tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "vgg19.pth"
    bad.write_text("these are not weights\n", encoding="utf-8")
    assert run(photo, weights=bad) == 2
    assert str(bad) in capsys.readouterr().err
    assert files_under(tmp_path / "out") == set()


def test_missing_weights_file(tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "vgg19.pth"
    assert run(photo, weights=missing) == 2
    assert str(missing) in capsys.readouterr().err
    assert files_under(tmp_path / "out") == set()


def test_environment_supplies_weights_and_device(tmp_path: Path, photo: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLEFOLD_WEIGHTS", "random")
    monkeypatch.setenv("STYLEFOLD_DEVICE", "cpu")
    assert run(photo, weights=None, device=None) == 0
    report = read_report(tmp_path / "out")
    assert (report["weights"]["source"], report["device"]) == ("random", "cpu")


def test_command_line_beats_environment(tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLEFOLD_WEIGHTS", str(tmp_path / "nowhere.pth"))
    monkeypatch.setenv("STYLEFOLD_DEVICE", "nosuchdevice")
    assert run(photo, weights="random", device="cpu") == 0


# ---------------------------------------------------------------- bad input


def test_corrupt_image_fails_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_text("this is not a JPEG\n", encoding="utf-8")
    assert run(corrupt) == 1
    assert "unreadable_image" in capsys.readouterr().err
    assert files_under(tmp_path / "out") == set()


def test_one_corrupt_image_does_not_stop_the_others(tmp_path: Path, photo: Path) -> None:
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(photo.read_bytes()[:200])  # a truncated JPEG
    assert run(corrupt, photo) == 1
    assert files_under(tmp_path / "out") == {
        f"{BASE}.jpg", f"logs/{BASE}.losses.csv", f"logs/{BASE}.json", f"logs/{BASE}.losses.png",
    }


@pytest.mark.parametrize(("preset", "sets", "rc", "message"), [
    ("nosuchpreset", (), 2, "unknown preset 'nosuchpreset'"),
    ("missing.json", (), 2, "missing.json does not exist"),
    ("book", ("steps=99999999",), 2, "steps"),
    ("book", ("stpes=5",), 2, "unknown key 'stpes'"),
    ("book", ("steps",), 2, "--set 'steps': expected KEY=VALUE"),
    ("book", ("style=../secret.png",), 2, "secret.png"),
    ("book", ("steps=3000",), 1, "too_large"),  # above the default config cap of 2000
    ("book", ("size=5000",), 1, "too_large"),  # above the default cap of 4096
], ids=["unknown-preset", "missing-preset-file", "steps-range", "unknown-key", "set-syntax",
        "missing-style", "steps-cap", "size-cap"])
def test_bad_run_exit_codes(tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str], preset: str,
                            sets: tuple[str, ...], rc: int, message: str) -> None:
    assert run(photo, sets=sets, preset=preset) == rc
    assert message in capsys.readouterr().err
    assert files_under(tmp_path / "out") == set()


def test_missing_image_is_bad_usage(tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(photo, tmp_path / "absent.jpg") == 2
    assert "absent.jpg" in capsys.readouterr().err
    assert files_under(tmp_path / "out") == set()  # checked before anything runs


def test_config_caps_input_pixels(tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "stylefold.toml"
    config.write_text("max_input_pixels = 5000\n", encoding="utf-8")  # the photo has 96x72 = 6912
    assert run(photo, extra=("--config", str(config))) == 1
    assert "too_large" in capsys.readouterr().err
    assert files_under(tmp_path / "out") == set()


def test_bad_config_file_is_bad_usage(tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "stylefold.toml"
    config.write_text("max_stepz = 5\n", encoding="utf-8")
    assert run(photo, extra=("--config", str(config))) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "max_stepz" in err


def test_image_too_small_for_the_network_fails_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """4x4 px cannot pass gatys' four poolings: the job fails (exit 1) with one sentence."""
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4), (90, 120, 150)).save(tiny)
    with caplog.at_level("ERROR"):
        assert run(tiny, preset="gatys", sets=("precision=fp32",)) == 1
    assert files_under(tmp_path / "out") == set()
    assert "too_small" in caplog.text and "at least 16 px" in caplog.text
    assert "Traceback" not in caplog.text


# ---------------------------------------------------------------- algorithm variants


@pytest.mark.parametrize(("sets", "effective"), [
    (("init=content",), {"init": "content"}),
    (("optimizer=lbfgs", "lr=1"), {"optimizer": "lbfgs", "lr": 1.0}),
    (("init=style",), {"init": "style"}),
    (("preserve_color=luminance",), {"preserve_color": "luminance"}),
    (("preserve_color=histogram",), {"preserve_color": "histogram"}),
    (("tv_weight=1", "pooling=max", "normalize=true"), {"tv_weight": 1.0, "pooling": "max", "normalize": True}),
    (('style_layers={"relu1_1": 1, "relu2_1": 0.5}', 'content_layers=["relu2_2"]'),
     {"style_layers": {"relu1_1": 1.0, "relu2_1": 0.5}, "content_layers": ["relu2_2"]}),
], ids=["init-content", "lbfgs", "init-style", "luminance", "histogram", "tv-max-normalize", "layer-weights"])
def test_variants_run(tmp_path: Path, photo: Path, sets: tuple[str, ...], effective: dict[str, Any]) -> None:
    assert run(photo, sets=sets) == 0
    with Image.open(tmp_path / "out" / f"{BASE}.jpg") as result:
        assert result.size == (42, 32)  # 96x72, shorter side to 32
    _, rows = read_losses(tmp_path / "out")
    assert [row["step"] for row in rows] == [1, 2]
    assert all(math.isfinite(row["total_loss"]) for row in rows)
    recorded = read_report(tmp_path / "out")["preset"]["effective"]
    assert {key: recorded[key] for key in effective} == effective


def test_luminance_mode_keeps_the_photos_colours(tmp_path: Path, photo: Path) -> None:
    """Gatys et al. 2016: the result's chroma is the content's (compared in PNG, no JPEG loss)."""
    assert run(photo, sets=("preserve_color=luminance", "output.format=png")) == 0
    working = fit_short_side(load_image(photo).image, 32)
    with Image.open(tmp_path / "out" / f"{BASE}.png") as result:
        got = np.asarray(result.convert("YCbCr"), dtype=int)
    want = np.asarray(working.convert("YCbCr"), dtype=int)
    chroma_error = np.abs(got[..., 1:] - want[..., 1:])
    assert np.median(chroma_error) <= 2, np.median(chroma_error)


def test_blended_styles_from_a_preset_file(tmp_path: Path, photo: Path) -> None:
    preset = write_blend_preset(tmp_path)
    assert run(photo, preset="blend.json") == 0
    base = "photo-a+b"
    assert files_under(tmp_path / "out") == {
        f"{base}.jpg", f"logs/{base}.losses.csv", f"logs/{base}.json", f"logs/{base}.losses.png",
    }
    report = read_report(tmp_path / "out", base)
    assert [Path(s["path"]).name for s in report["styles"]] == ["a.png", "b.png"]
    weights = [s["weight"] for s in report["styles"]]
    assert weights[1] / weights[0] == pytest.approx(3)
    assert report["preset"]["source"] == str(preset.name)


def test_operator_style_path_names_the_result(tmp_path: Path, photo: Path, style_image: Path) -> None:
    """``stylefold run`` may use any style file the operator names; STYLE is its stem."""
    assert run(photo, sets=(f"style={style_image}",)) == 0
    assert (tmp_path / "out" / "photo-texture.jpg").is_file()
    assert Path(read_report(tmp_path / "out", "photo-texture")["styles"][0]["path"]) == style_image.resolve()


# ---------------------------------------------------------------- help and usage


def test_module_help_in_a_subprocess(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "stylefold", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for command in ("run", "presets", "bench"):
        assert command in done.stdout


def test_help_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "run" in capsys.readouterr().out
    assert main(["run", "--help"]) == 0
    assert "--set" in capsys.readouterr().out
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
    assert main(["run"]) == 2  # IMAGE is required
    assert main(["frobnicate"]) == 2
