"""Winograd F(4x4, 3x3): the same convolution as oneDNN's, forward and gradient, taken only
where it pays."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stylefold.engine import winograd
from stylefold.engine.features import build_extractor
from stylefold.engine.winograd import MIN_CHANNELS, Winograd3x3


def _frozen_conv(c: int, k: int, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(c, k, 3, padding=1).requires_grad_(False)


def _both(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(direct output, direct input gradient, Winograd output, Winograd input gradient)."""
    wino = Winograd3x3(conv)
    x_direct, x_wino = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_direct, y_wino = conv(x_direct), wino(x_wino)
    assert type(y_wino.grad_fn).__name__ == "_WinogradFnBackward"  # the path under test ran
    y_direct.backward(grad)
    y_wino.backward(grad)
    assert x_direct.grad is not None and x_wino.grad is not None
    return y_direct, x_direct.grad, y_wino, x_wino.grad


@pytest.mark.parametrize(
    ("n", "c", "k", "h", "w"),
    [(1, 256, 64, 17, 23), (2, 64, 256, 5, 9), (1, 256, 256, 1, 1), (1, 256, 512, 8, 8), (1, 512, 256, 6, 3)],
)
def test_output_and_gradient_match_the_direct_convolution(n: int, c: int, k: int, h: int, w: int) -> None:
    conv = _frozen_conv(c, k)
    torch.manual_seed(1)
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(n, k, h, w)
    y_direct, g_direct, y_wino, g_wino = _both(conv, x, grad)
    # Sizes that are not whole 4x4 blocks exercise the padding and the crop.
    torch.testing.assert_close(y_wino, y_direct, rtol=0, atol=1e-4 * y_direct.abs().max().item())
    torch.testing.assert_close(g_wino, g_direct, rtol=0, atol=1e-4 * g_direct.abs().max().item())
    assert y_wino.is_contiguous(memory_format=torch.channels_last)
    assert g_wino.is_contiguous(memory_format=torch.channels_last)


def test_a_contiguous_nchw_input_gives_the_same_result() -> None:
    conv = _frozen_conv(256, 256)
    x = torch.randn(1, 256, 7, 10)
    torch.testing.assert_close(Winograd3x3(conv)(x), conv(x), rtol=0, atol=1e-4 * conv(x).abs().max().item())


def test_it_runs_only_where_it_pays() -> None:
    wide, narrow = Winograd3x3(_frozen_conv(64, MIN_CHANNELS)), Winograd3x3(_frozen_conv(64, MIN_CHANNELS // 2))
    x = torch.randn(1, 64, 8, 8)
    assert wide.pays(x) and not narrow.pays(x)
    assert not wide.pays(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not wide.pays(x)
        assert type(wide(x.requires_grad_()).grad_fn).__name__ == "ConvolutionBackward0"
    wide.enabled = False
    assert not wide.pays(x)
    trainable = Winograd3x3(nn.Conv2d(256, 256, 3, padding=1))
    assert not trainable.pays(torch.randn(1, 256, 8, 8))  # it gives no weight gradient
    bias_only = Winograd3x3(_frozen_conv(256, 256))
    assert bias_only.conv.bias is not None
    bias_only.conv.bias.requires_grad_()
    x = torch.randn(1, 256, 8, 8)
    assert not bias_only.pays(x)  # nor a bias gradient
    bias_only(x).sum().backward()
    assert bias_only.conv.bias.grad is not None


def test_changed_weights_are_transformed_again() -> None:
    conv = _frozen_conv(256, 256)
    wino = Winograd3x3(conv)
    x = torch.randn(1, 256, 8, 8)
    before = wino(x)
    with torch.no_grad():
        conv.weight.mul_(2.0)
    after = wino(x)
    bias = conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(after - bias, 2 * (before - bias), rtol=1e-4, atol=1e-4)


def test_only_plain_3x3_convolutions_are_accepted() -> None:
    with pytest.raises(ValueError, match="3x3"):
        Winograd3x3(nn.Conv2d(256, 256, 3, padding=1, stride=2))


def test_the_extractor_uses_it_on_the_wide_layers_only_and_can_be_switched_off() -> None:
    extractor = build_extractor("random")
    x = torch.rand(1, 3, 40, 56).contiguous(memory_format=torch.channels_last).requires_grad_()
    layers = ["conv1_1", "conv1_2", "conv2_1", "conv3_1", "conv4_2", "conv5_1"]
    fast = extractor(x, layers)
    assert {n: type(t.grad_fn).__name__ == "_WinogradFnBackward" for n, t in fast.items()} == {
        "conv1_1": False, "conv1_2": False, "conv2_1": True, "conv3_1": True, "conv4_2": True, "conv5_1": True}
    assert extractor.winograd
    extractor.winograd = False
    direct = extractor(x, layers)
    assert not extractor.winograd
    assert {type(t.grad_fn).__name__ for t in direct.values()} == {"ConvolutionBackward0"}
    for name in layers:
        scale = direct[name].abs().max().item()
        torch.testing.assert_close(fast[name], direct[name], rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize(("h", "w", "band_floats"), [(21, 14, 1), (16, 19, 2 * 36 * 5 * 64), (9, 8, 36 * 2 * 64)])
def test_an_image_taken_in_several_bands_gives_the_same_result(
    monkeypatch: pytest.MonkeyPatch, h: int, w: int, band_floats: int
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
    y_direct, g_direct, y_wino, g_wino = _both(conv, x, grad)
    torch.testing.assert_close(y_wino, y_direct, rtol=0, atol=1e-4 * y_direct.abs().max().item())
    torch.testing.assert_close(g_wino, g_direct, rtol=0, atol=1e-4 * g_direct.abs().max().item())
