"""The engine's maths and loop, on random weights at tiny sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision

from stylefold.engine import color
from stylefold.engine.features import WeightsError, avg_pool_2x2, build_extractor
from stylefold.engine.layers import LAYER_NAMES
from stylefold.engine.losses import content_loss, gram_matrix, relu_and_gram, tv_loss
from stylefold.engine.runtime import cpu_bf16, resolve_precision
from stylefold.engine.stylize import EngineError, StyleTargetCache, stylize
from tests.conftest import book_params

BOOK_STYLE = tuple((n, 1.0) for n in ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"))
GATYS_STYLE = tuple((n, 1.0) for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"))
BOOK = book_params(steps=3, init="content")
assert BOOK.style_layers == BOOK_STYLE and BOOK.content_layers == (("conv2_2", 1.0),)


def _images(seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size + 8, generator=g), torch.rand(1, 3, size + 4, size, generator=g)


def _reference_features(seed: int = 0) -> torch.nn.Sequential:
    """torchvision's own vgg19().features with the same seeded init as build_extractor('random')."""
    torch.manual_seed(seed)
    return torchvision.models.vgg19().features.eval()


# ------------------------------------------------------------------ features


def test_layer_names_follow_torchvision_order():
    features = torchvision.models.vgg19().features
    assert len(LAYER_NAMES) == len(features) == 37
    for name, module in zip(LAYER_NAMES, features):
        expected = {"conv": torch.nn.Conv2d, "relu": torch.nn.ReLU, "pool": torch.nn.MaxPool2d}[name[:4]]
        assert isinstance(module, expected), name
    assert LAYER_NAMES[21] == "conv4_2" and LAYER_NAMES[29] == "relu5_1"


def test_conv_tap_is_before_relu_and_relu_tap_after(extractor):
    x, _ = _images()
    reference = _reference_features()
    with torch.no_grad():
        taps = extractor(x, ["conv1_1", "relu1_1", "conv2_2", "relu2_2"], pooling="max")
        # Clone after each module: torchvision's ReLUs are in place.
        expected, h = {}, x
        for i, module in enumerate(reference[:9]):
            h = module(h.clone())
            expected[LAYER_NAMES[i]] = h
    for name in ("conv1_1", "relu1_1", "conv2_2", "relu2_2"):
        torch.testing.assert_close(taps[name], expected[name], rtol=1e-5, atol=1e-5)
    # The conv tap keeps its negative pre-activations even though its ReLU ran after it.
    assert (taps["conv1_1"] < 0).any()
    torch.testing.assert_close(taps["relu1_1"], taps["conv1_1"].clamp_min(0))


def test_avg_pooling_replaces_max(extractor):
    x, _ = _images()
    with torch.no_grad():
        avg = extractor(x, ["conv2_1"], pooling="avg")["conv2_1"]
        mx = extractor(x, ["conv2_1"], pooling="max")["conv2_1"]
        relu = extractor(x, ["relu1_2"])["relu1_2"]
        manual = extractor.convs["conv2_1"](F.avg_pool2d(relu, 2, 2))
    torch.testing.assert_close(avg, manual)
    assert not torch.allclose(avg, mx)


def test_forward_stops_after_deepest_requested_layer(extractor):
    calls: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, m in extractor.convs.items()]
    try:
        with torch.no_grad():
            extractor(_images()[0], ["conv1_1", "conv3_1"])
    finally:
        for h in hooks:
            h.remove()
    assert calls == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]


def test_unknown_layer_is_an_error(extractor):
    with pytest.raises(ValueError, match="conv9_9"):
        extractor(_images()[0], ["conv9_9"])


def test_weights_file_full_or_features_only(tmp_path):
    torch.manual_seed(3)
    full = torchvision.models.vgg19().state_dict()
    torch.save(full, tmp_path / "full.pth")
    torch.save({k: v for k, v in full.items() if k.startswith("features.")}, tmp_path / "features.pth")
    a = build_extractor(tmp_path / "full.pth")
    b = build_extractor(tmp_path / "features.pth")
    torch.testing.assert_close(a.convs["conv5_4"].weight, full["features.34.weight"])
    torch.testing.assert_close(b.convs["conv1_1"].bias, full["features.0.bias"])
    assert a.weights.source == "file" and len(a.weights.sha256 or "") == 64


def test_wrong_weights_files_are_clear_errors(tmp_path):
    (tmp_path / "text.pth").write_text("not a checkpoint")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    torch.save({k: v for k, v in torchvision.models.vgg16().state_dict().items()}, tmp_path / "vgg16.pth")
    with pytest.raises(WeightsError, match="text.pth"):
        build_extractor(tmp_path / "text.pth")
    with pytest.raises(WeightsError, match="missing"):
        build_extractor(tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="vgg16.pth"):
        build_extractor(tmp_path / "vgg16.pth")
    with pytest.raises(WeightsError, match="does not exist"):
        build_extractor(tmp_path / "absent.pth")


def test_imagenet_offline_error_names_file_and_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as err:
        build_extractor("imagenet")
    message = str(err.value)
    assert "vgg19-dcbb9e9d.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "548 MB" in message


def test_random_weights_are_seeded_and_logged(caplog):
    with caplog.at_level("WARNING"):
        a = build_extractor("random", seed=5)
    b = build_extractor("random", seed=5)
    torch.testing.assert_close(a.convs["conv3_1"].weight, b.convs["conv3_1"].weight)
    assert "RANDOM" in caplog.text


# ------------------------------------------------------------------ losses


def test_gram_matrix_matches_direct_formula():
    f = torch.randn(1, 5, 4, 3, dtype=torch.float64)
    direct = torch.empty(5, 5, dtype=torch.float64)
    for i in range(5):
        for j in range(5):
            direct[i, j] = (f[0, i] * f[0, j]).sum() / (1 * 5 * 4 * 3)
    torch.testing.assert_close(gram_matrix(f).double(), direct, rtol=1e-6, atol=1e-9)


def test_gram_is_fp32_for_bf16_features():
    f = torch.randn(1, 8, 6, 6).to(torch.bfloat16)
    assert gram_matrix(f).dtype == torch.float32


def test_tv_loss_zero_on_flat_and_positive_on_edges():
    flat = torch.full((1, 3, 8, 8), 0.3)
    edge = flat.clone()
    edge[..., 4:] = 0.9
    assert tv_loss(flat).item() == 0
    # one vertical edge of height 0.6: 8 rows x 1 column of differences among 8x7 pairs
    assert tv_loss(edge).item() == pytest.approx(0.36 * (8 * 1) / (8 * 7) * 3 / 3)


# ------------------------------------------------------------------ loop


def test_losses_fall_with_each_optimiser(extractor):
    content, style = _images()
    for params in (
        dataclasses.replace(BOOK, steps=15, init="noise"),
        dataclasses.replace(BOOK, steps=15, init="noise", optimizer="lbfgs", lr=1.0, normalize=True,
                            style_layers=GATYS_STYLE, content_layers=(("relu4_2", 1.0),)),
    ):
        result = stylize(extractor, content, [(style, 1.0)], params)
        totals = [h.total_loss for h in result.history]
        assert len(totals) == 15
        assert totals[-1] < 0.5 * totals[0], params.optimizer
        assert result.image.shape == content.shape
        assert 0 <= result.image.min() and result.image.max() <= 1


def test_each_init(extractor):
    content, style = _images()
    first = {}
    for init in ("content", "style", "noise"):
        seen = []
        params = dataclasses.replace(BOOK, steps=1, init=init, lr=1e-9)
        stylize(extractor, content, [(style, 1.0)], params, on_snapshot=None,
                on_step=lambda info: seen.append(info))
        first[init] = seen[0]
    # content init: content loss starts at zero; the others do not.
    assert first["content"].content_loss == 0
    assert first["style"].content_loss > 0 and first["noise"].content_loss > 0
    assert first["noise"].content_loss != pytest.approx(first["style"].content_loss)


def test_noise_init_is_the_chapters_seeded_randn(extractor):
    content, style = _images()
    params = dataclasses.replace(BOOK, steps=1, init="noise", lr=0.0 + 1e-12, seed=7)
    result = stylize(extractor, content, [(style, 1.0)], params)
    torch.manual_seed(7)
    expected = torch.randn(content.size()).clamp(0, 1)
    torch.testing.assert_close(result.image, expected, atol=1e-6, rtol=0)


def test_history_rows_are_weighted_and_sum(extractor):
    content, style = _images()
    params = dataclasses.replace(BOOK, steps=2, tv_weight=10.0, style_weight=1e3, content_weight=2.0)
    result = stylize(extractor, content, [(style, 1.0)], params)
    for h in result.history:
        assert h.tv_loss > 0
        assert h.total_loss == pytest.approx(h.style_loss + h.content_loss + h.tv_loss, rel=1e-6)


def test_style_targets_cached_across_jobs(extractor):
    content, style = _images()
    cache = StyleTargetCache()
    a = stylize(extractor, content, [(style, 1.0)], BOOK, style_cache=cache)
    b = stylize(extractor, content, [(style.clone(), 1.0)], BOOK, style_cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    assert a.history[0].style_loss == b.history[0].style_loss
    stylize(extractor, content, [(style, 1.0)], dataclasses.replace(BOOK, pooling="max"), style_cache=cache)
    assert cache.misses == 2  # another pooling is another target


def test_blend_weights_are_normalised(extractor):
    content, style = _images()
    other = _images(seed=9)[1]
    one = stylize(extractor, content, [(style, 1.0)], BOOK).history[0].style_loss
    same_twice = stylize(extractor, content, [(style, 1.0), (style, 3.0)], BOOK).history[0].style_loss
    assert same_twice == pytest.approx(one, rel=1e-5)
    scaled = stylize(extractor, content, [(style, 2.0), (other, 6.0)], BOOK).history[0].style_loss
    unit = stylize(extractor, content, [(style, 0.25), (other, 0.75)], BOOK).history[0].style_loss
    assert scaled == pytest.approx(unit, rel=1e-5)


def test_stop_flag_and_resume_continue_the_same_run(extractor):
    content, style = _images()
    params = dataclasses.replace(BOOK, steps=6)
    whole = stylize(extractor, content, [(style, 1.0)], params)
    seen = []
    first = stylize(extractor, content, [(style, 1.0)], params,
                    on_step=seen.append, should_stop=lambda: len(seen) >= 3)
    assert first.stopped and first.state.step == 3 and len(first.history) == 3
    rest = stylize(extractor, content, [(style, 1.0)], params, resume=first.state)
    assert [h.step for h in rest.history] == [4, 5, 6]
    assert rest.history[-1].total_loss == pytest.approx(whole.history[-1].total_loss, rel=1e-5)


def test_snapshots_every_n_steps(extractor):
    content, style = _images()
    snaps = []
    stylize(extractor, content, [(style, 1.0)], dataclasses.replace(BOOK, steps=5, snapshot_every=2),
            on_snapshot=lambda step, img: snaps.append((step, img.shape)))
    assert [s for s, _ in snaps] == [2, 4]
    assert snaps[0][1] == content.shape


def test_bf16_close_to_fp32(extractor):
    content, style = _images()
    fp32 = stylize(extractor, content, [(style, 1.0)], dataclasses.replace(BOOK, steps=5))
    bf16 = stylize(extractor, content, [(style, 1.0)], dataclasses.replace(BOOK, steps=5, precision="bf16"))
    assert bf16.history[-1].total_loss == pytest.approx(fp32.history[-1].total_loss, rel=0.05)


def test_fp16_on_cpu_and_divergence_are_clear_errors(extractor):
    content, style = _images()
    with pytest.raises(EngineError, match="fp16"):
        stylize(extractor, content, [(style, 1.0)], dataclasses.replace(BOOK, precision="fp16"))
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    nan_style = torch.full_like(style, float("nan"))
    with pytest.raises(EngineError, match="diverged"):
        stylize(extractor, content, [(nan_style, 1.0)], BOOK)


def test_auto_precision_on_cpu_follows_native_bf16():
    expected = "bf16" if cpu_bf16()[0] else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize(("cpuinfo", "native"), [
    # A Xeon with AVX-512 and VNNI but no AVX512-BF16/AMX: oneDNN "supports" bf16 there,
    # emulated, 60 % slower than fp32; auto must say fp32.
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n", False),
    ("flags\t: avx2 avx512f avx512_bf16 avx512_vnni\n", True),  # Cooper Lake, Zen 4
    ("flags\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n", True),  # Sapphire Rapids
    ("Features\t: fp asimd sve bf16 i8mm\n", True),  # arm64 Neoverse V1
    ("Features\t: fp asimd\n", False),
    ("", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, native: bool) -> None:
    found, why = cpu_bf16(cpuinfo)
    assert found is native
    assert why and (("native" in why) is native)


# ------------------------------------------------------------------ colour


def test_luminance_recombination_keeps_content_chroma():
    content, _ = _images()
    styled = torch.rand_like(content)
    out = color.recombine_chroma(styled, content)
    ours, theirs = color.rgb_to_ycbcr(out), color.rgb_to_ycbcr(content)
    # Chroma comes from the content (up to clamping into the RGB cube).
    assert (ours[:, 1:] - theirs[:, 1:]).abs().mean() < 0.02
    torch.testing.assert_close(color.ycbcr_to_rgb(color.rgb_to_ycbcr(content)), content, atol=1e-5, rtol=0)


def test_histogram_matching_matches_mean_and_covariance():
    g = torch.Generator().manual_seed(2)
    content = (torch.rand(1, 3, 40, 40, generator=g) * 0.5 + 0.25)
    style = torch.rand(1, 3, 30, 50, generator=g) * 0.3
    style[:, 0] += 0.5
    matched = color.match_color_statistics(style, content)
    m, c = matched.reshape(3, -1).double(), content.reshape(3, -1).double()
    torch.testing.assert_close(m.mean(1), c.mean(1), atol=2e-3, rtol=0)
    torch.testing.assert_close(torch.cov(m), torch.cov(c), atol=2e-3, rtol=0)


def test_gram_backward_matches_autograd_of_the_direct_formula():
    f = torch.randn(1, 6, 5, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, 6, dtype=torch.float64)  # an asymmetric upstream gradient
    (gram_matrix(f).double() * weights).sum().backward()
    ours = f.grad.clone()
    f.grad = None
    flat = f.reshape(6, 20)
    ((flat @ flat.t() / (6 * 20)) * weights).sum().backward()
    torch.testing.assert_close(ours, f.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("both", [True, False])
def test_relu_and_gram_backward_matches_autograd_of_relu_and_gram(layout: torch.memory_format, both: bool) -> None:
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 6, 5, 4, generator=g).contiguous(memory_format=layout)
    up = torch.randn(1, 6, 5, 4, generator=g).contiguous(memory_format=layout)
    weights = torch.randn(6, 6, generator=g)  # an asymmetric upstream gradient of the Gram

    def grad_of(fused: bool) -> torch.Tensor:
        x = x0.clone().requires_grad_(True)
        y, gram = relu_and_gram(x) if fused else (F.relu(x), gram_matrix(x))
        loss = (gram * weights).sum() + ((y * up).sum() if both else 0)
        loss.backward()
        assert x.grad is not None
        return x.grad

    torch.testing.assert_close(grad_of(True), grad_of(False), rtol=1e-5, atol=1e-6)
    x = x0.clone()
    y, gram = relu_and_gram(x)
    assert torch.equal(y, F.relu(x0)) and torch.allclose(gram, gram_matrix(x0))


def test_fused_grams_give_the_same_loss_and_gradient_as_plain_taps(extractor):
    content, style = _images()
    layers = [n for n, _ in BOOK_STYLE] + ["conv2_2"]
    x = content.contiguous(memory_format=torch.channels_last)
    results = []
    for fused in (frozenset(n for n, _ in BOOK_STYLE), frozenset()):
        image = x.clone().requires_grad_(True)
        taps, grams = extractor.with_grams(image, layers, "avg", fused)
        # conv3_1 is the deepest tap: no ReLU follows it, so its Gram is left to the caller.
        assert sorted(grams) == (["conv1_1", "conv1_2", "conv2_1", "conv2_2"] if fused else [])
        loss = sum((grams[n] if n in grams else gram_matrix(taps[n])).square().sum() for n, _ in BOOK_STYLE)
        loss = loss + taps["conv2_2"].square().mean()
        loss.backward()
        results.append((loss.detach(), image.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("shape", [(1, 8, 6, 10), (2, 3, 7, 9), (1, 64, 33, 34)])
def test_the_2x2_average_pool_is_the_chapters_forward_and_backward(layout: torch.memory_format, shape) -> None:
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(*shape, generator=g).contiguous(memory_format=layout)
    ours, theirs = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    y_ours, y_theirs = avg_pool_2x2(ours), torch.nn.AvgPool2d(kernel_size=2, stride=2, padding=0)(theirs)
    up = torch.randn(y_theirs.shape, generator=g)
    y_ours.backward(up)
    y_theirs.backward(up)
    assert type(y_ours.grad_fn).__name__ == "_AvgPool2x2Backward"
    assert torch.equal(y_ours, y_theirs)
    assert ours.grad is not None and theirs.grad is not None
    assert torch.equal(ours.grad, theirs.grad)  # odd sizes: the unpooled last row/column get 0
    assert ours.grad.is_contiguous(memory_format=layout)


def test_content_loss_is_the_chapters_mse_loss() -> None:
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(1, 16, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
    target = torch.randn(1, 16, 9, 7, generator=g)
    ours, theirs = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    loss_ours, loss_theirs = content_loss(ours, target), F.mse_loss(theirs, target)
    (3 * loss_ours).backward()
    (3 * loss_theirs).backward()
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-6, atol=0)
    assert ours.grad is not None and theirs.grad is not None
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="differ"):
        content_loss(x0, target[..., :6])  # F.mse_loss would broadcast with a warning
    with pytest.raises(ValueError, match="detach"):
        content_loss(x0, target.clone().requires_grad_())
