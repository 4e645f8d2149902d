"""An L-BFGS run's result is its lowest-loss image (issue 11's measurements: without a
line search, one evaluation a step, L-BFGS overshoots into spikes and climbs back; a run
ending in one handed out, or on to the next scale, a picture hundreds of times worse
than its best). Adam, and so the chapter's ``book``, keeps its last image.
"""

from __future__ import annotations

from typing import Any

import torch

from stylefold.engine.stylize import stylize
from stylefold.job.checkpoint import Checkpoint

from .conftest import book_params

GATYS = dict(optimizer="lbfgs", normalize=True, init="noise", content_layers=(("relu4_2", 1.0),),
             style_layers=tuple((n, 1.0) for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")))


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 32, 40, generator=g), torch.rand(1, 3, 32, 32, generator=g)


def test_an_lbfgs_run_that_climbs_returns_the_image_of_its_lowest_loss(extractor: Any) -> None:
    content, style = _images()
    params = book_params(steps=12, lr=3.0, **GATYS)  # lr 3 overshoots at 32 px: the loss climbs after step 3
    result = stylize(extractor, content, [(style, 1.0)], params)
    totals = [h.total_loss for h in result.history]
    lowest = totals.index(min(totals)) + 1
    assert totals[-1] > 2 * min(totals) and lowest < len(totals)  # the case this is about
    assert result.result_step == lowest
    # The image evaluated at step k is the one after k - 1 updates.
    before = stylize(extractor, content, [(style, 1.0)], book_params(steps=lowest - 1, lr=3.0, **GATYS))
    torch.testing.assert_close(result.image, before.state.image.clamp(0, 1), rtol=0, atol=0)
    assert not torch.equal(result.image, result.state.image.clamp(0, 1))  # not the last image
    assert result.state.step == 12  # the run itself went on: its state resumes from the last step


def test_adam_and_so_book_keeps_its_last_image(extractor: Any) -> None:
    content, style = _images()
    result = stylize(extractor, content, [(style, 1.0)], book_params(steps=4, init="content", lr=0.5))
    assert result.result_step is None
    torch.testing.assert_close(result.image, result.state.image.clamp(0, 1), rtol=0, atol=0)


def test_the_lowest_loss_image_survives_a_checkpoint(extractor: Any, tmp_path: Any) -> None:
    content, style = _images()
    params = book_params(steps=12, lr=3.0, **GATYS)
    whole = stylize(extractor, content, [(style, 1.0)], params)
    seen: list[int] = []
    first = stylize(extractor, content, [(style, 1.0)], params, on_step=lambda i: seen.append(i.step),
                    should_stop=lambda: len(seen) >= 8)
    assert first.stopped and first.state.best is not None
    path = tmp_path / "job.ckpt"
    Checkpoint("id", first.state, [], []).save(path)
    state = Checkpoint.load(path).state
    assert state.best is not None and state.best[:2] == first.state.best[:2]
    rest = stylize(extractor, content, [(style, 1.0)], params, resume=state)
    assert rest.result_step == whole.result_step
    torch.testing.assert_close(rest.image, whole.image, rtol=0, atol=0)
