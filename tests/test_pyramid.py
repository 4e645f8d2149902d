"""Coarse-to-fine planning and the pyramid driver (issue: photographer-grade results)."""

from __future__ import annotations

import torch

from stylefold.engine.pyramid import MIN_COARSE_SIDE, bytes_per_pixel, plan_pyramid, stylize_pyramid
from stylefold.engine.stylize import stylize
from tests.conftest import book_params

GATYS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2"]
BOOK = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]


def test_fits_whole_is_one_scale_one_tile():
    plan = plan_pyramid(512, 682, 300, 512 * 682, layers=BOOK)
    assert [(s.height, s.width, s.steps, len(s.tiles)) for s in plan] == [(512, 682, 300, 1)]


def test_pyramid_doubles_up_to_the_requested_size():
    plan = plan_pyramid(2048, 3072, 300, 700_000, layers=GATYS)
    sizes = [(s.height, s.width) for s in plan]
    assert sizes[-1] == (2048, 3072)
    for (h0, w0), (h1, w1) in zip(sizes, sizes[1:]):
        assert (h1, w1) == (2 * h0, 2 * w0)
    coarse = plan[0]
    assert coarse.height * coarse.width <= 700_000 and len(coarse.tiles) == 1
    assert min(coarse.height, coarse.width) >= MIN_COARSE_SIDE
    assert coarse.steps == 300 and all(s.steps < 300 for s in plan[1:])


def test_tiles_cover_each_scale_and_respect_the_budget():
    budget = 700_000
    for scale in plan_pyramid(2048, 3072, 300, budget, layers=GATYS):
        covered = torch.zeros(scale.height, scale.width, dtype=torch.bool)
        for t in scale.tiles:
            assert t.height * t.width <= budget
            assert t.top + t.height <= scale.height and t.left + t.width <= scale.width
            covered[t.top:t.top + t.height, t.left:t.left + t.width] = True
        assert covered.all()


def test_memory_estimate_grows_with_depth_and_precision_width():
    assert bytes_per_pixel(GATYS, "fp32") > bytes_per_pixel(BOOK, "fp32")
    assert bytes_per_pixel(BOOK, "bf16") > 0


def test_single_scale_plan_runs_exactly_the_plain_loop(extractor):
    g = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, 40, 48, generator=g), torch.rand(1, 3, 40, 40, generator=g)
    params = book_params(steps=4, init="content")
    plain = stylize(extractor, content, [(style, 1.0)], params)
    via = stylize_pyramid(extractor, content, [(style, 1.0)], params, plan_pyramid(40, 48, 4, 10**6, layers=BOOK))
    assert [h.total_loss for h in via.history] == [h.total_loss for h in plain.history]
    torch.testing.assert_close(via.image, plain.image)


def test_multiscale_hands_each_result_to_the_next_scale(extractor, monkeypatch):
    import stylefold.engine.pyramid as pyramid

    seen = []
    real = pyramid.stylize

    def spy(extractor, content, styles, params, **kw):
        seen.append((tuple(content.shape[-2:]), None if kw.get("init_image") is None else kw["init_image"].clone()))
        result = real(extractor, content, styles, params, **kw)
        seen[-1] = (*seen[-1], result.image.clone())
        return result

    monkeypatch.setattr(pyramid, "stylize", spy)
    g = torch.Generator().manual_seed(1)
    content, style = torch.rand(1, 3, 64, 96, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    params = book_params(steps=3, init="content")
    monkeypatch.setattr(pyramid, "MIN_COARSE_SIDE", 16)
    plan = pyramid.plan_pyramid(64, 96, 3, 32 * 48, layers=BOOK)
    assert [(s.height, s.width) for s in plan] == [(32, 48), (64, 96)]
    steps = []
    result = pyramid.stylize_pyramid(extractor, content, [(style, 1.0)], params, plan,
                                     on_step=lambda info: steps.append(info.step))
    coarse_shape, coarse_init, coarse_out = seen[0]
    assert coarse_shape == (32, 48) and coarse_init is None
    # Every fine tile starts from the coarse result, upsampled.
    up = torch.nn.functional.interpolate(coarse_out, size=(64, 96), mode="bilinear", align_corners=False,
                                         antialias=True).clamp(0, 1)
    for (shape, init, _), tile in zip(seen[1:], plan[1].tiles):
        assert shape == (tile.height, tile.width)
        torch.testing.assert_close(init, up[..., tile.top:tile.top + tile.height, tile.left:tile.left + tile.width])
    assert result.image.shape == (1, 3, 64, 96)
    assert steps == list(range(1, len(steps) + 1))  # one numbering across scales and tiles
    assert len(steps) == plan[0].steps + plan[1].steps * len(plan[1].tiles)
