"""Winograd F(4x4, 3x3): the same convolution as oneDNN's, forward and gradient, by each
way of doing its products; taken only where it can run, and there only where it was
measured faster."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from torch import nn

from stylefold.engine import conv_methods, winograd
from stylefold.engine.conv_methods import MARGIN, METHODS, onednn_products
from stylefold.engine.features import build_extractor
from stylefold.engine.winograd import MIN_CHANNELS, Winograd3x3
from stylefold.job.bench import step_flops
from stylefold.job.run import engine_params
from stylefold.presets import PresetLibrary

WINOGRAD = [pytest.param("winograd", id="mkl-bmm"), pytest.param("winograd-onednn", id="onednn")]


@pytest.fixture(autouse=True)
def _fresh_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_methods, "_CHOSEN", {})  # each test measures for itself


def _frozen_conv(c: int, k: int, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(c, k, 3, padding=1).requires_grad_(False)


def _both(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor, method: str) -> tuple[torch.Tensor, ...]:
    """(direct output, direct input gradient, Winograd output, Winograd input gradient)."""
    if method == "winograd-onednn" and not onednn_products():
        pytest.skip("this torch has no oneDNN fp32 matmul")
    wino = Winograd3x3(conv)
    wino.method = method  # type: ignore[assignment]
    x_direct, x_wino = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_direct, y_wino = conv(x_direct), wino(x_wino)
    assert type(y_wino.grad_fn).__name__ == "_WinogradFnBackward"  # the path under test ran
    assert wino.last_method == method
    y_direct.backward(grad)
    y_wino.backward(grad)
    assert x_direct.grad is not None and x_wino.grad is not None
    return y_direct, x_direct.grad, y_wino, x_wino.grad


@pytest.mark.parametrize("method", WINOGRAD)
@pytest.mark.parametrize(
    ("n", "c", "k", "h", "w"),
    [(1, 256, 64, 17, 23), (2, 64, 256, 5, 9), (1, 256, 256, 1, 1), (1, 256, 512, 8, 8), (1, 512, 256, 6, 3)],
)
def test_output_and_gradient_match_the_direct_convolution(n: int, c: int, k: int, h: int, w: int,
                                                          method: str) -> None:
    conv = _frozen_conv(c, k)
    torch.manual_seed(1)
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(n, k, h, w)
    y_direct, g_direct, y_wino, g_wino = _both(conv, x, grad, method)
    # Sizes that are not whole 4x4 blocks exercise the padding and the crop.
    torch.testing.assert_close(y_wino, y_direct, rtol=0, atol=1e-4 * y_direct.abs().max().item())
    torch.testing.assert_close(g_wino, g_direct, rtol=0, atol=1e-4 * g_direct.abs().max().item())
    assert y_wino.is_contiguous(memory_format=torch.channels_last)
    assert g_wino.is_contiguous(memory_format=torch.channels_last)


def test_a_contiguous_nchw_input_gives_the_same_result() -> None:
    conv = _frozen_conv(256, 256)
    wino = Winograd3x3(conv)
    wino.method = "winograd"
    x = torch.randn(1, 256, 7, 10)
    torch.testing.assert_close(wino(x), conv(x), rtol=0, atol=1e-4 * conv(x).abs().max().item())
    assert wino.last_method == "winograd"


def test_it_runs_only_where_it_can() -> None:
    wide, narrow = Winograd3x3(_frozen_conv(64, MIN_CHANNELS)), Winograd3x3(_frozen_conv(64, MIN_CHANNELS // 2))
    wide.method = narrow.method = "winograd"
    x = torch.randn(1, 64, 8, 8)
    assert wide.can_run(x) and wide.pays(x) and not narrow.can_run(x) and not narrow.pays(x)
    assert not wide.can_run(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not wide.can_run(x)
        assert type(wide(x.requires_grad_()).grad_fn).__name__ == "ConvolutionBackward0"
    wide.method = "direct"
    assert wide.can_run(x) and not wide.pays(x)
    trainable = Winograd3x3(nn.Conv2d(256, 256, 3, padding=1))
    trainable.method = "winograd"
    assert not trainable.pays(torch.randn(1, 256, 8, 8))  # it gives no weight gradient
    bias_only = Winograd3x3(_frozen_conv(256, 256))
    bias_only.method = "winograd"
    assert bias_only.conv.bias is not None
    bias_only.conv.bias.requires_grad_()
    x = torch.randn(1, 256, 8, 8)
    assert not bias_only.pays(x)  # nor a bias gradient
    bias_only(x).sum().backward()
    assert bias_only.conv.bias.grad is not None


def test_auto_measures_each_shape_once_and_takes_the_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[list[str]] = []
    seconds = {"direct": 1.0, "winograd": 0.9, "winograd-onednn": 0.5}

    def fake_timer(runners: dict[str, object], rounds: int = 2) -> dict[str, float]:
        timed.append(list(runners))
        return {m: seconds[m] for m in runners}

    monkeypatch.setattr(conv_methods, "time_methods", fake_timer)
    conv = _frozen_conv(128, 128)
    wino, twin = Winograd3x3(conv), Winograd3x3(conv)
    x = torch.randn(1, 128, 12, 16)
    fastest = "winograd-onednn" if onednn_products() else "winograd"
    y = wino(x)
    assert wino.last_method == fastest and len(timed) == 1
    assert timed[0][:2] == ["direct", "winograd"] and ("winograd-onednn" in timed[0]) == onednn_products()
    torch.testing.assert_close(y, conv(x), rtol=0, atol=1e-4 * y.abs().max().item())
    wino(x)
    twin(x)  # the same shape by another module (another extractor): the process's table
    assert twin.last_method == fastest and len(timed) == 1
    # A new shape is measured; one not MARGIN faster than direct stays direct, and the
    # layer drops the transformed kernels it made to measure.
    seconds.update({"winograd": 1.0 / MARGIN + 0.01, "winograd-onednn": 1.0 / MARGIN + 0.01})
    x2 = torch.randn(1, 128, 20, 20)
    assert wino.method_for(x2) == "direct" and len(timed) == 2 and not wino._kernels
    assert type(wino(x2.requires_grad_()).grad_fn).__name__ == "ConvolutionBackward0"
    # Where Winograd cannot run, nothing is measured.
    assert wino.method_for(x.bfloat16()) == "direct" and len(timed) == 2


def test_auto_times_the_same_convolution_and_draws_no_random_numbers() -> None:
    conv = _frozen_conv(128, 256)
    wino = Winograd3x3(conv)
    x = torch.randn(1, 128, 9, 14).contiguous(memory_format=torch.channels_last)
    runners = wino._runners(x)
    assert list(runners) == [m for m in METHODS if m != "winograd-onednn" or onednn_products()]
    direct_grad = runners["direct"]()[0]  # type: ignore[index]
    y = conv(x)
    for method, run in runners.items():
        if method != "direct":  # each times the input gradient of its output at its output
            torch.testing.assert_close(run(), direct_grad, rtol=0, atol=1e-4 * direct_grad.abs().max().item())
    torch.testing.assert_close(direct_grad, torch.nn.grad.conv2d_input(x.shape, conv.weight, y, padding=1))
    rng = torch.get_rng_state()
    chosen = wino.method_for(x)
    assert torch.equal(torch.get_rng_state(), rng)  # a job's noise init is not moved by measuring
    assert chosen in METHODS and conv_methods._CHOSEN == {(1, 128, 256, 14, torch.get_num_threads()): chosen}
    assert wino.method_for(torch.randn(1, 128, 14, 9)) == chosen and len(conv_methods._CHOSEN) == 1  # same pixels
    wino.method_for(torch.randn(1, 128, 18, 28))  # 4x the pixels: measured anew
    assert len(conv_methods._CHOSEN) == 2


def test_a_method_far_slower_in_the_warm_up_is_not_timed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    calls: dict[str, int] = {}

    def runner(method: str, cost: float) -> Callable[[], None]:
        def run() -> None:
            calls[method] = calls.get(method, 0) + 1
            clock[0] += cost
        return run

    monkeypatch.setattr(conv_methods.time, "perf_counter", lambda: clock[0])
    seconds = conv_methods.time_methods({"direct": runner("direct", 1.0), "winograd": runner("winograd", 1.6),
                                      "winograd-onednn": runner("winograd-onednn", 1.2)}, rounds=2)
    assert seconds == pytest.approx({"direct": 1.0, "winograd": 1.6, "winograd-onednn": 1.2})
    assert calls == {"direct": 3, "winograd": 1, "winograd-onednn": 3}


@pytest.mark.parametrize("method", WINOGRAD)
def test_changed_weights_are_transformed_again(method: str) -> None:
    if method == "winograd-onednn" and not onednn_products():
        pytest.skip("this torch has no oneDNN fp32 matmul")
    conv = _frozen_conv(256, 256)
    wino = Winograd3x3(conv)
    wino.method = method  # type: ignore[assignment]
    x = torch.randn(1, 256, 8, 8)
    before = wino(x)
    with torch.no_grad():
        conv.weight.mul_(2.0)
    after = wino(x)
    bias = conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(after - bias, 2 * (before - bias), rtol=1e-4, atol=1e-4)
    assert wino.last_method == method


def test_only_plain_3x3_convolutions_are_accepted() -> None:
    with pytest.raises(ValueError, match="3x3"):
        Winograd3x3(nn.Conv2d(256, 256, 3, padding=1, stride=2))


def test_the_extractor_runs_it_on_the_wide_layers_only_and_can_be_switched() -> None:
    extractor = build_extractor("random")
    x = torch.rand(1, 3, 40, 56).contiguous(memory_format=torch.channels_last).requires_grad_()
    layers = ["conv1_1", "conv1_2", "conv2_1", "conv3_1", "conv4_2", "conv5_1"]
    assert extractor.conv_method == "auto"
    extractor.conv_method = "winograd"
    fast = extractor(x, layers)
    assert {n: type(t.grad_fn).__name__ == "_WinogradFnBackward" for n, t in fast.items()} == {
        "conv1_1": False, "conv1_2": False, "conv2_1": True, "conv3_1": True, "conv4_2": True, "conv5_1": True}
    extractor.conv_method = "direct"
    direct = extractor(x, layers)
    assert extractor.conv_method == "direct"
    assert {type(t.grad_fn).__name__ for t in direct.values()} == {"ConvolutionBackward0"}
    extractor.conv_method = "auto"
    auto = extractor(x, layers)
    ran = extractor.conv_methods()
    assert ran["conv1_1"] == ran["conv1_2"] == "direct" and set(ran.values()) <= set(METHODS)
    assert "conv5_2" not in ran  # it did not run
    for name in layers:
        scale = direct[name].abs().max().item()
        torch.testing.assert_close(fast[name], direct[name], rtol=0, atol=1e-4 * scale)
        torch.testing.assert_close(auto[name], direct[name], rtol=0, atol=1e-4 * scale)
    with pytest.raises(ValueError, match="conv method"):
        extractor.conv_method = "fft"  # type: ignore[assignment]


@pytest.mark.parametrize("method", WINOGRAD)
@pytest.mark.parametrize(("h", "w", "band_floats"), [(21, 14, 1), (16, 19, 2 * 36 * 5 * 64), (9, 8, 36 * 2 * 64)])
def test_an_image_taken_in_several_bands_gives_the_same_result(
    monkeypatch: pytest.MonkeyPatch, h: int, w: int, band_floats: int, method: str
) -> None:
    # Bands of one or two block rows, the last band short, the last row and column of
    # blocks ragged: every seam of the banded transforms and of the backward's overlaps.
    monkeypatch.setattr(winograd, "BAND_FLOATS", band_floats)
    conv = _frozen_conv(64, 128)
    torch.manual_seed(2)
    x = torch.randn(1, 64, h, w).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(1, 128, h, w)
    bands = -(-h // winograd.M) / winograd._band(1, -(-w // winograd.M), 128)
    assert bands > 1
    y_direct, g_direct, y_wino, g_wino = _both(conv, x, grad, method)
    torch.testing.assert_close(y_wino, y_direct, rtol=0, atol=1e-4 * y_direct.abs().max().item())
    torch.testing.assert_close(g_wino, g_direct, rtol=0, atol=1e-4 * g_direct.abs().max().item())


def test_the_bench_counts_onednn_products_as_the_same_work() -> None:
    if not onednn_products():
        pytest.skip("this torch has no oneDNN fp32 matmul")
    extractor = build_extractor("random")
    params = engine_params(PresetLibrary.default().load("gatys"), "fp32")
    g = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, 32, 40, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    flops = {}
    for method in METHODS:
        extractor.conv_method = method
        flops[method] = step_flops(extractor, params, content, style)
    assert flops["winograd"] == flops["winograd-onednn"]
    assert 0 < flops["winograd"] < flops["direct"]  # a quarter of the multiplications, on the wide layers


def test_a_method_that_fails_while_measured_is_left_out(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    def refuse(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("oneDNN refuses this shape")

    monkeypatch.setattr(winograd, "linear_onednn", refuse)
    monkeypatch.setattr(conv_methods, "onednn_products", lambda: True)
    monkeypatch.setattr(winograd, "onednn_products", lambda: True)
    conv = _frozen_conv(128, 128)
    wino = Winograd3x3(conv)
    x = torch.randn(1, 128, 12, 16)
    with caplog.at_level(logging.WARNING, logger="stylefold.engine.conv_methods"):
        y = wino(x)  # the job goes on
    assert wino.last_method in ("direct", "winograd")
    assert list(conv_methods._CHOSEN.values()) == [wino.last_method]
    assert caplog.text.count("winograd-onednn failed, not used: oneDNN refuses this shape") == 1
    torch.testing.assert_close(y, conv(x), rtol=0, atol=1e-4 * y.abs().max().item())


def test_choices_travel_in_a_checkpoint_and_only_well_formed_ones_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    conv_methods._CHOSEN.update({(1, 128, 128, 14, 2): "winograd", (1, 256, 256, 12, 2): "direct"})
    entries = conv_methods.snapshot()
    assert entries == [([1, 128, 128, 14, 2], "winograd"), ([1, 256, 256, 12, 2], "direct")]
    monkeypatch.setattr(conv_methods, "_CHOSEN", {})
    hostile = [*entries, "junk", (["1", 2, 3, 4, 5], "direct"), ([1, 2, 3], "direct"), ([1, 2, 3, 4, 5], "os.system"),
               ([1, 2, 3, 4, True], "direct")]
    assert conv_methods.adopt(hostile) == 2 and conv_methods.adopt({"not": "a list"}) == 0
    assert conv_methods._CHOSEN == {(1, 128, 128, 14, 2): "winograd", (1, 256, 256, 12, 2): "direct"}
    monkeypatch.setattr(conv_methods, "onednn_products", lambda: False)
    assert conv_methods.adopt([([1, 64, 128, 10, 2], "winograd-onednn")]) == 0  # it cannot run here: measured
