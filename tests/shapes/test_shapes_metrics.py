"""The accuracy table's metrics on hand-made masks and labels: J and boundary F (DAVIS's
definitions, tolerance included), their video mean, PSNR, and the two edit criteria."""

import numpy as np
import pytest

from vitron_rt.shapes import metrics


def square(x1: int, y1: int, x2: int, y2: int, size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y1:y2, x1:x2] = True
    return m


def test_iou_counts_pixels():
    a, b = square(0, 0, 10, 10), square(5, 0, 15, 10)  # 50 shared of 150
    assert metrics.iou(a, b) == pytest.approx(50 / 150)
    assert metrics.iou(a, a) == 1.0
    assert metrics.iou(a, np.zeros_like(a)) == 0.0
    assert metrics.iou(np.zeros_like(a), np.zeros_like(a)) == 1.0  # nothing to find, nothing found
    with pytest.raises(ValueError, match="different sizes"):
        metrics.iou(a, np.zeros((8, 8), bool))


def test_boundary_is_the_one_pixel_rim():
    b = metrics.boundary(square(10, 10, 20, 20))
    assert b.sum() == 36 and b[10, 10] and b[19, 15] and not b[15, 15]
    # The image border counts as outside: a full mask has a rim too.
    assert metrics.boundary(np.ones((5, 5), bool)).sum() == 16


def test_boundary_f_tolerates_a_shift_within_the_tolerance_only():
    truth = square(20, 20, 40, 40)
    assert metrics.boundary_tolerance(64, 64) == 1  # 0.008 x 90.5 px, at least 1
    assert metrics.boundary_tolerance(480, 854) == 8  # DAVIS's 480p frames
    assert metrics.boundary_f(truth, truth) == 1.0
    assert metrics.boundary_f(square(21, 20, 41, 40), truth) == 1.0  # 1 px: every rim pixel matched
    shifted = metrics.boundary_f(square(24, 20, 44, 40), truth)
    assert 0.0 < shifted < 0.6  # only the top and bottom edges overlap
    assert metrics.boundary_f(square(24, 20, 44, 40), truth, tolerance=4) == 1.0
    assert metrics.boundary_f(square(0, 0, 5, 5), truth) == 0.0
    assert metrics.boundary_f(np.zeros_like(truth), truth) == 0.0
    assert metrics.boundary_f(np.zeros_like(truth), np.zeros_like(truth)) == 1.0


def test_video_score_averages_frames():
    truth = np.stack([square(10, 10, 30, 30)] * 4)
    pred = truth.copy()
    pred[2] = False  # one frame missed entirely
    v = metrics.video_score(pred, truth)
    assert v.j == pytest.approx(0.75) and v.f == pytest.approx(0.75) and v.jf == pytest.approx(0.75)
    with pytest.raises(ValueError):
        metrics.video_score(pred[0], truth[0])


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    assert metrics.mean_squared_error(a, b) == 0.0 and metrics.psnr(0.0) is None
    b[0, 0, 0] = 255  # one of 48 values off by 255
    mse = metrics.mean_squared_error(a, b)
    assert mse == pytest.approx(255**2 / 48)
    assert metrics.psnr(mse) == pytest.approx(10 * np.log10(48))
    assert metrics.pooled_psnr([mse, 0.0]) == pytest.approx(10 * np.log10(96))
    assert metrics.pooled_psnr([]) is None


def test_edit_score_needs_the_target_changed_and_the_rest_kept():
    # Labels: 7 = background, 0 = red, 2 = blue, -1 = near no colour.
    inp = np.full((32, 32), 7)
    inp[4:12, 4:12] = 0  # the red shape to make blue
    inp[20:28, 20:28] = 2  # another shape that must stay
    region = inp == 0
    target = np.where(region, 2, inp)
    good = target.copy()
    good[4, 4:12] = -1  # a blurred edge: left out, not counted against it
    s = metrics.edit_score(good, inp, target, region)
    assert s.correct and s.inside == 1.0 and s.outside == 0.0
    untouched = metrics.edit_score(inp, inp, target, region)
    assert not untouched.correct and untouched.inside == 0.0
    spilled = good.copy()
    spilled[20:28, 20:28] = 0  # the other shape turned red too
    s = metrics.edit_score(spilled, inp, target, region)
    assert not s.correct and s.inside == 1.0 and s.outside > 0.05
    # Videos: the same over (T, H, W).
    v = metrics.edit_score(np.stack([good, good]), np.stack([inp, inp]), np.stack([target, target]),
                           np.stack([region, region]))  # fmt: skip
    assert v.correct
