"""Presets: the built-ins, validation errors, ``extends``, style confinement, ``--set``
parsing and the ``stylefold presets`` command, all on real JSON files in ``tmp_path``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from stylefold.cli import main, parse_set
from stylefold.presets import (
    MAX_EXTENDS_DEPTH,
    Preset,
    PresetError,
    PresetLibrary,
    StyleNotFound,
    builtin_dir,
)

from .conftest import write_texture

BOOK_STYLE_LAYERS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]
GATYS_STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
BUILTIN_NAMES = PresetLibrary.default().names()


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No STYLEFOLD_* variable or ./hotfolders of the developer's shell leaks in."""
    for var in ("STYLEFOLD_ROOT", "STYLEFOLD_CONFIG", "STYLEFOLD_DEVICE", "STYLEFOLD_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    """The message of the PresetError that loading ``path`` must raise."""
    with pytest.raises(PresetError) as info:
        PresetLibrary.default().load_file(path)
    return str(info.value)


def custom_library(tmp_path: Path, presets: dict[str, dict[str, Any]]) -> PresetLibrary:
    """A presets dir holding ``presets`` (name -> JSON), searched before the built-ins."""
    custom = tmp_path / "presets"
    custom.mkdir(exist_ok=True)
    for name, data in presets.items():
        write_json(custom / f"{name}.json", data)
    return PresetLibrary(preset_dirs=(custom, builtin_dir()), style_dirs=(builtin_dir() / "styles",))


@pytest.fixture
def styles(tmp_path: Path) -> Path:
    """styles/ with a.png, sub/b.png; secret.png lies next to (outside) it."""
    folder = tmp_path / "styles"
    (folder / "sub").mkdir(parents=True)
    write_texture(folder / "a.png", size=16)
    write_texture(folder / "sub" / "b.png", size=16, seed=2)
    write_texture(tmp_path / "secret.png", size=16, seed=3)
    return folder


def style_library(styles: Path) -> PresetLibrary:
    return PresetLibrary(preset_dirs=(builtin_dir(),), style_dirs=(styles,))


# ---------------------------------------------------------------- built-ins


def test_book_preset_is_the_chapters_numbers() -> None:
    book = PresetLibrary.default().load("book")
    assert book.style_weight == 1e6
    assert book.content_weight == 1
    assert book.tv_weight == 0
    assert book.steps == 300
    assert book.lr == 0.1
    assert book.optimizer == "adam"
    assert book.init == "noise"
    assert book.size == 128
    assert book.style_layers == BOOK_STYLE_LAYERS
    assert book.content_layers == ["conv2_2"]
    assert book.pooling == "avg"
    assert book.normalize is False
    assert book.seed == 0
    assert book.style_layer_weights() == tuple((name, 1.0) for name in BOOK_STYLE_LAYERS)


def test_model_defaults_are_the_book_file() -> None:
    """A sidecar without ``extends`` means "book + changes"."""
    raw = json.loads((builtin_dir() / "book.json").read_text(encoding="utf-8"))
    # The book file spells out every key, so it and the model's defaults cannot drift apart.
    assert set(raw) == set(Preset.model_fields) - {"extends"}
    book = Preset.model_validate(raw).model_dump(exclude={"description"})
    assert Preset().model_dump(exclude={"description"}) == book
    sidecar = Preset.model_validate({"steps": 5}).model_dump(exclude={"description"})
    assert sidecar == {**book, "steps": 5}


def test_gatys_preset_is_the_papers_layers() -> None:
    gatys = PresetLibrary.default().load("gatys")
    assert gatys.style_layers == GATYS_STYLE_LAYERS
    assert gatys.content_layers == ["relu4_2"]
    assert gatys.normalize is True
    assert gatys.pooling == "avg"
    assert gatys.extends is None  # the chain is applied, not kept
    assert gatys.style_weight == 1e6  # inherited from book


def test_builtins_include_book_and_gatys() -> None:
    assert {"book", "gatys"} <= set(BUILTIN_NAMES)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_every_builtin_loads_and_its_style_ships(name: str) -> None:
    library = PresetLibrary.default()
    preset = library.load(name)
    shipped = (builtin_dir() / "styles").resolve()
    for ref in preset.style_refs():
        resolved = library.resolve_style(ref.path)
        assert resolved.is_file()
        assert resolved.parent == shipped


# ---------------------------------------------------------------- validation errors

# (case id, file content, regexes the message must match besides the file name)
BAD_PRESETS: list[tuple[str, str | bytes, list[str]]] = [
    ("steps-zero", json.dumps({"steps": 0}), [r"steps: .*\b1\b", r"got 0"]),
    ("steps-huge", json.dumps({"steps": 10**7}), [r"steps: .*\b100000\b", r"got 10000000"]),
    ("lr-negative", json.dumps({"lr": -0.5}), [r"lr: .*greater than 0", r"got -0\.5"]),
    ("steps-wrong-type", json.dumps({"steps": "many"}), [r"steps: .*integer", r'got "many"']),
    ("unknown-key", json.dumps({"stpes": 3}), [r"unknown key 'stpes'", r"known keys: .*\bsteps\b"]),
    ("unknown-layer", json.dumps({"style_layers": ["conv1_1", "conv9_9"]}),
     [r'style_layers: "conv9_9" is not a VGG19 layer; a layer is convB_N \(before its ReLU\) or reluB_N']),
    ("optimizer-literal", json.dumps({"optimizer": "sgd"}), [r"optimizer: .*'adam' or 'lbfgs'", r'got "sgd"']),
    ("quality-zero", json.dumps({"output": {"quality": 0}}), [r"output\.quality: .*\b1\b", r"got 0"]),
    ("empty-style-layers", json.dumps({"style_layers": []}), [r"style_layers: .*at least one style layer"]),
    ("negative-style-weight", json.dumps({"style": [{"path": "a.png", "weight": 1},
                                                     {"path": "b.png", "weight": -3}]}),
     [r"style\.1\.weight: .*greater than 0", r"got -3"]),
    ("invalid-json", '{"steps": 3,', [r"not valid JSON"]),
    ("json-list", json.dumps([{"steps": 3}]), [r"must be a JSON object, got list"]),
    ("too-big", json.dumps({"description": "x" * (65 * 1024)}), [r"at most 64 KB"]),
    # 100000 nested lists are 200 KB: refused by size before the parser sees them ...
    ("nested-100000", "[" * 100_000 + "]" * 100_000, [r"at most 64 KB"]),
    # ... 30000 fit under 64 KB and must end in the parser's recursion guard, not a crash.
    ("nested-30000", "[" * 30_000 + "]" * 30_000, [r"not valid JSON"]),
    ("nested-in-key", '{"style_layers": ' + "[" * 30_000 + "]" * 30_000 + "}", [r"not valid JSON"]),
    ("nested-objects", '{"output":' + '{"a":' * 8_000 + "1" + "}" * 8_001, [r"not valid JSON"]),
    ("not-utf8", b'{"description": "\xff\xfe"}', [r"not valid JSON"]),
]


@pytest.mark.parametrize(("content", "patterns"), [(c, p) for _, c, p in BAD_PRESETS],
                         ids=[case for case, _, _ in BAD_PRESETS])
def test_bad_preset_error_names_file_key_and_range(tmp_path: Path, content: str | bytes,
                                                   patterns: list[str]) -> None:
    path = tmp_path / "sidecar.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    message = load_error(path)
    assert str(path) in message
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def test_error_for_several_problems_names_each_key(tmp_path: Path) -> None:
    message = load_error(write_json(tmp_path / "p.json", {"steps": 0, "lr": 0, "pooling": "sum"}))
    for key in ("steps", "lr", "pooling"):
        assert re.search(rf"{key}: ", message), message


def test_boolean_for_an_integer_key_is_a_wrong_type(tmp_path: Path) -> None:
    message = load_error(write_json(tmp_path / "p.json", {"steps": True}))
    assert "steps" in message


def test_utf8_bom_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"steps": 7, "output": {"format": "png"}}).encode())
    preset = PresetLibrary.default().load_file(path)
    assert preset.steps == 7
    assert preset.output.format == "png"


def test_file_of_exactly_64_kb_is_accepted(tmp_path: Path) -> None:
    head = '{"steps": 9, "description": "'
    tail = '"}'
    path = tmp_path / "full.json"
    # description is capped at 500 chars, so pad with whitespace JSON ignores instead.
    body = head + "d" * 10 + tail
    path.write_text(body + " " * (64 * 1024 - len(body)), encoding="utf-8")
    assert path.stat().st_size == 64 * 1024
    assert PresetLibrary.default().load_file(path).steps == 9


def test_missing_preset_file_is_a_preset_error(tmp_path: Path) -> None:
    message = load_error(tmp_path / "absent.json")
    assert "absent.json" in message


# ---------------------------------------------------------------- extends


def test_extends_chain_of_three_custom_presets(tmp_path: Path) -> None:
    library = custom_library(tmp_path, {
        "base": {"extends": "gatys", "steps": 10, "output": {"format": "png"}},
        "middle": {"extends": "base", "lr": 0.5, "output": {"quality": 70}},
        "top": {"extends": "middle", "size": 64, "steps": 12},
    })
    top = library.load("top")
    assert (top.steps, top.lr, top.size) == (12, 0.5, 64)
    assert top.style_layers == GATYS_STYLE_LAYERS  # from gatys, two levels up
    assert top.content_layers == ["relu4_2"]
    assert top.style_weight == 1e6  # from book, three levels up
    # output merges key by key: format from base, quality from middle.
    assert (top.output.format, top.output.quality) == ("png", 70)
    assert "extends" not in top.effective()


def test_overrides_merge_output_key_by_key(tmp_path: Path) -> None:
    library = custom_library(tmp_path, {"web": {"extends": "book", "output": {"format": "webp", "quality": 60}}})
    preset = library.load_file(tmp_path / "presets" / "web.json", {"output": {"quality": 80}, "steps": 4})
    assert (preset.output.format, preset.output.quality, preset.steps) == ("webp", 80, 4)


@pytest.mark.parametrize("presets", [
    {"a": {"extends": "b"}, "b": {"extends": "a"}},
    {"a": {"extends": "b"}, "b": {"extends": "c"}, "c": {"extends": "a"}},
    {"a": {"extends": "a"}},
], ids=["a-b-a", "a-b-c-a", "self"])
def test_extends_loop_is_an_error_naming_the_chain(tmp_path: Path, presets: dict[str, dict[str, Any]]) -> None:
    library = custom_library(tmp_path, presets)
    with pytest.raises(PresetError, match="loops") as info:
        library.load("a")
    message = str(info.value)
    assert "extends" in message
    for name in presets:
        assert re.search(rf"\b{name}\b", message.split("the chain", 1)[1]), message


def test_extends_unknown_parent(tmp_path: Path) -> None:
    library = custom_library(tmp_path, {"child": {"extends": "nosuchpreset", "steps": 5}})
    with pytest.raises(PresetError, match=r"extends: unknown preset 'nosuchpreset'") as info:
        library.load("child")
    assert "child.json" in str(info.value)


@pytest.mark.parametrize("parent", ["../book", "/etc/passwd", "", 42], ids=["dotdot", "absolute", "empty", "int"])
def test_extends_must_be_a_plain_preset_name(tmp_path: Path, parent: Any) -> None:
    path = write_json(tmp_path / "p.json", {"extends": parent})
    message = load_error(path)
    assert "extends" in message


def chain(length: int) -> dict[str, dict[str, Any]]:
    """p0 extends p1 ... extends p{length-1}, which extends book: ``length`` levels."""
    presets = {f"p{i}": {"extends": f"p{i + 1}"} for i in range(length - 1)}
    presets[f"p{length - 1}"] = {"extends": "book", "steps": 42}
    return presets


def test_extends_depth_limit(tmp_path: Path) -> None:
    library = custom_library(tmp_path, chain(MAX_EXTENDS_DEPTH + 1))
    assert MAX_EXTENDS_DEPTH == 8
    # p1 is 8 levels above book: allowed; p0 is 9: refused.
    assert library.load("p1").steps == 42
    with pytest.raises(PresetError, match=r"extends: more than 8 levels"):
        library.load("p0")


# ---------------------------------------------------------------- style confinement


@pytest.mark.parametrize("name", ["a.png", "sub/b.png"])
def test_style_inside_the_styles_folder_resolves(styles: Path, name: str) -> None:
    assert style_library(styles).resolve_style(name) == (styles / name).resolve()


def test_style_parent_escape_is_refused(styles: Path) -> None:
    assert (styles / ".." / "secret.png").is_file()
    with pytest.raises(StyleNotFound, match=r"relative path inside a styles folder"):
        style_library(styles).resolve_style("../secret.png")
    with pytest.raises(StyleNotFound):
        style_library(styles).resolve_style("sub/../../secret.png")


def test_style_absolute_path_is_refused(styles: Path) -> None:
    for absolute in (styles.parent / "secret.png", styles / "a.png"):
        with pytest.raises(StyleNotFound):
            style_library(styles).resolve_style(str(absolute))


def test_style_symlink_pointing_outside_is_refused(styles: Path) -> None:
    (styles / "innocent.png").symlink_to(styles.parent / "secret.png")
    (styles / "linked_dir").symlink_to(styles.parent, target_is_directory=True)
    library = style_library(styles)
    with pytest.raises(StyleNotFound, match="outside the allowed style folders"):
        library.resolve_style("innocent.png")
    with pytest.raises(StyleNotFound, match="outside the allowed style folders"):
        library.resolve_style("linked_dir/secret.png")


def test_style_symlink_inside_the_styles_folder_is_allowed(styles: Path) -> None:
    (styles / "alias.png").symlink_to("sub/b.png")
    assert style_library(styles).resolve_style("alias.png") == (styles / "sub" / "b.png").resolve()


def test_style_missing_and_nul_are_not_found(styles: Path) -> None:
    library = style_library(styles)
    with pytest.raises(StyleNotFound, match="not found"):
        library.resolve_style("nosuch.png")
    with pytest.raises(StyleNotFound):
        library.resolve_style("a.png\x00")
    with pytest.raises(StyleNotFound):
        library.resolve_style("sub")  # a folder is not a style image


def test_operator_may_name_any_existing_file(styles: Path) -> None:
    secret = styles.parent / "secret.png"
    library = style_library(styles)
    assert library.resolve_style(str(secret), operator_path_ok=True) == secret.resolve()
    # operator_path_ok does not turn a missing file into a lookup elsewhere.
    with pytest.raises(StyleNotFound):
        library.resolve_style(str(styles.parent / "gone.png"), operator_path_ok=True)


def test_style_dirs_are_searched_in_order(tmp_path: Path, styles: Path) -> None:
    second = tmp_path / "more_styles"
    second.mkdir()
    write_texture(second / "a.png", size=16, seed=9)
    write_texture(second / "only_here.png", size=16)
    library = PresetLibrary(preset_dirs=(builtin_dir(),), style_dirs=(styles, second))
    assert library.resolve_style("a.png") == (styles / "a.png").resolve()
    assert library.resolve_style("only_here.png") == (second / "only_here.png").resolve()


# ---------------------------------------------------------------- style blends


def test_style_list_blend_loads_and_resolves(tmp_path: Path, styles: Path) -> None:
    path = write_json(tmp_path / "blend.json", {"style": [{"path": "a.png", "weight": 1},
                                                          {"path": "sub/b.png", "weight": 3}]})
    library = style_library(styles)
    preset = library.load_file(path)
    refs = preset.style_refs()
    assert [(r.path, r.weight) for r in refs] == [("a.png", 1.0), ("sub/b.png", 3.0)]
    assert [library.resolve_style(r.path) for r in refs] == [(styles / "a.png").resolve(),
                                                             (styles / "sub" / "b.png").resolve()]


def test_single_style_is_one_ref_of_weight_one() -> None:
    assert [(r.path, r.weight) for r in Preset(style="ink_wash.png").style_refs()] == [("ink_wash.png", 1.0)]


@pytest.mark.parametrize("style", [[], [{"path": "a.png", "weight": 0}], [{"path": "a.png", "extra": 1}],
                                   [{"path": f"s{i}.png"} for i in range(9)]],
                         ids=["empty", "zero-weight", "unknown-key", "more-than-8"])
def test_bad_style_lists_are_refused(tmp_path: Path, style: list[dict[str, Any]]) -> None:
    message = load_error(write_json(tmp_path / "p.json", {"style": style}))
    assert "style" in message


# ---------------------------------------------------------------- --set parsing


@pytest.mark.parametrize(("items", "expected"), [
    (["steps=50"], {"steps": 50}),
    (["lr=0.5", "style_weight=1e5"], {"lr": 0.5, "style_weight": 1e5}),
    (["normalize=true"], {"normalize": True}),
    (["style=ink_wash.png"], {"style": "ink_wash.png"}),
    (["description=two words"], {"description": "two words"}),
    (['style_layers=["relu1_1", "relu2_1"]'], {"style_layers": ["relu1_1", "relu2_1"]}),
    (['content_layers={"relu4_2": 2}'], {"content_layers": {"relu4_2": 2}}),
    (["output.format=png", "output.quality=80"], {"output": {"format": "png", "quality": 80}}),
    (["steps=5", "steps=7"], {"steps": 7}),
    (["style=a=b.png"], {"style": "a=b.png"}),
    ([], {}),
])
def test_parse_set(items: list[str], expected: dict[str, Any]) -> None:
    assert parse_set(items) == expected


@pytest.mark.parametrize("items", [["steps"], ["=5"], ["output=png", "output.format=png"]],
                         ids=["no-equals", "no-key", "not-an-object"])
def test_parse_set_errors(items: list[str]) -> None:
    with pytest.raises(PresetError, match=r"--set"):
        parse_set(items)


def test_parse_set_deeply_nested_value_is_a_preset_error() -> None:
    with pytest.raises(PresetError):
        parse_set(["steps=" + "[" * 100_000])


def test_set_extends_is_applied_or_refused() -> None:
    try:
        preset = PresetLibrary.default().load_file(builtin_dir() / "book.json", parse_set(["extends=gatys"]))
    except PresetError:
        return  # refusing it is as good as applying it; ignoring it silently is not
    assert preset.style_layers == GATYS_STYLE_LAYERS


def test_set_values_are_validated_like_file_keys(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", {"extends": "book"})
    with pytest.raises(PresetError, match=r"output\.format: .*'png'"):
        PresetLibrary.default().load_file(path, parse_set(["output.format=gif"]))


# ---------------------------------------------------------------- the presets command


def test_cli_presets_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(BUILTIN_NAMES)
    book = lines[names.index("book")]
    assert "steps 300" in book and "size 128" in book and "brushstrokes.png" in book


def test_cli_presets_list_survives_a_broken_studio_preset(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "studio").mkdir()
    (tmp_path / "studio" / "broken.json").write_text("{", encoding="utf-8")
    config = tmp_path / "stylefold.toml"
    config.write_text('presets_dir = "studio"\n', encoding="utf-8")
    assert main(["presets", "list", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    names = [line.split()[0] for line in captured.out.splitlines()]
    assert {"book", "gatys"} <= set(names)
    assert "broken" in captured.out + captured.err


def test_cli_presets_show_gatys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "show", "gatys"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "extends" not in shown
    assert shown["content_layers"] == ["relu4_2"]
    assert shown["style_layers"] == GATYS_STYLE_LAYERS
    assert shown["style_weight"] == 1e6  # inherited from book


def test_cli_presets_show_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "show", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "book" in err


def test_cli_presets_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["type"] == "object"
    assert {"style_layers", "content_layers", "steps", "output", "extends"} <= set(schema["properties"])
    assert (schema["properties"]["steps"]["minimum"], schema["properties"]["steps"]["maximum"]) == (1, 100_000)
    assert schema["additionalProperties"] is False


def test_cli_presets_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_json(tmp_path / "good.json", {"extends": "gatys", "steps": 20})
    bad = write_json(tmp_path / "bad.json", {"extends": "book", "stpes": 20})
    escape = write_json(tmp_path / "escape.json", {"style": "../good.json"})
    assert main(["presets", "validate", str(good), str(bad), str(escape)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"OK {good}"
    assert lines[1].startswith(f"INVALID {bad}") and "'stpes'" in lines[1] and "'steps'?" in lines[1]
    assert lines[2].startswith("known keys: ")  # several problems: one per line
    assert lines[3].startswith("INVALID") and "../good.json" in lines[3]
    assert len(lines) == 4


def test_cli_presets_validate_all_good(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [write_json(tmp_path / f"{n}.json", {"steps": n}) for n in (1, 2)]
    assert main(["presets", "validate", *map(str, files)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"OK {f}" for f in files]


def test_cli_presets_validate_uses_root_styles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sidecar's style is looked up in ROOT/styles first (SPEC §4)."""
    root = tmp_path / "hot"
    (root / "styles").mkdir(parents=True)
    write_texture(root / "styles" / "house.png", size=16)
    sidecar = write_json(tmp_path / "s.json", {"style": "house.png"})
    assert main(["presets", "validate", "--root", str(root), str(sidecar)]) == 0
    assert main(["presets", "validate", str(sidecar)]) == 2  # default root ./hotfolders has no house.png
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"OK {sidecar}"
    assert out[1].startswith("INVALID") and "house.png" in out[1]


def test_cli_presets_validate_deeply_nested_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 30_000 + "]" * 30_000, encoding="utf-8")
    assert main(["presets", "validate", str(deep)]) == 2
    assert capsys.readouterr().out.startswith(f"INVALID {deep}: not valid JSON")


def test_presets_dir_files_are_listed_after_shadowing(tmp_path: Path) -> None:
    """A studio presets dir comes first: its ``gatys`` shadows the built-in."""
    library = custom_library(tmp_path, {"gatys": {"extends": "book", "steps": 11}, "studio": {"steps": 3}})
    assert {"book", "gatys", "studio"} <= set(library.names())
    assert library.load("gatys").steps == 11
    assert library.find("../presets/studio") is None
    assert os.path.samefile(library.find("studio"), tmp_path / "presets" / "studio.json")


def test_unknown_layer_is_one_human_sentence(tmp_path: Path) -> None:
    """Not pydantic's enumeration of all 32 names: the file, the key, the bad value and
    the form of a valid name, in one sentence (list and object forms alike)."""
    for layers in (["conv1_1", "conv9_9"], {"conv9_9": 1.0}):
        path = tmp_path / "p.json"
        path.write_text(json.dumps({"style_layers": layers}))
        with pytest.raises(PresetError) as caught:
            PresetLibrary.default().load_file(path)
        message = str(caught.value)
        assert message.startswith(f'{path}: style_layers: "conv9_9" is not a VGG19 layer; ')
        assert "convB_N (before its ReLU) or reluB_N (after it)" in message and "relu4_2" in message
        assert "'conv5_4'" not in message and "\n" not in message
        assert len(message) - len(str(path)) < 200
