"""RetinaNet Fig. 1 curves against the written equation FL(p_t) = -(1 - p_t)^gamma log(p_t)."""

import numpy as np
import pytest

from detector.analysis.focal_curves import focal_loss_curve, plot_focal_loss


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_curve_is_the_focal_loss_equation(gamma):
    p_t = np.array([0.002, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999])
    expected = -((1.0 - p_t) ** gamma) * np.log(p_t)
    np.testing.assert_allclose(focal_loss_curve(p_t, gamma), expected, rtol=1e-10, atol=1e-12)


def test_curve_hand_values_and_ends():
    # CE at p_t = 0.5 is log 2; FL with gamma 2 divides it by 4; p_t = 1 costs nothing at any gamma.
    assert focal_loss_curve(np.array([0.5]), 0.0)[0] == pytest.approx(np.log(2.0), rel=1e-12)
    assert focal_loss_curve(np.array([0.5]), 2.0)[0] == pytest.approx(np.log(2.0) / 4, rel=1e-12)
    assert focal_loss_curve(np.array([1.0]), 2.0)[0] == 0.0
    with pytest.raises(ValueError, match="p_t"):
        focal_loss_curve(np.array([0.0, 0.5]), 2.0)


def test_plot_writes_png(tmp_path):
    out = plot_focal_loss([0, 2], tmp_path / "fig1.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    with pytest.raises(ValueError, match="PNG"):
        plot_focal_loss([0, 2], tmp_path / "fig1.jpg")
