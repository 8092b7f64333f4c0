"""The spatter drop-shading steps (``corruptions._drops``) against OpenCV itself."""

import numpy as np
import pytest
import torch

from corruptions import _drops
from corruptions._filters import gaussian_blur

cv2 = pytest.importorskip("cv2", reason="OpenCV (installed with imagecorruptions) is the reference")


def _liquid_u8(sigma: float, threshold: float) -> torch.Tensor:
    """An 8-bit liquid layer as spatter makes it: blurred noise, low values zeroed (B, 1, H, W)."""
    g = torch.Generator().manual_seed(int(sigma * 10))
    layer = gaussian_blur(torch.randn(3, 1, 96, 120, generator=g) * 0.3 + 0.65, sigma)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    return torch.floor(layer * 255).remainder(256)


def _each(images: torch.Tensor, fn) -> np.ndarray:
    return np.stack([fn(a[0].numpy().astype(np.uint8)) for a in images])


@pytest.mark.parametrize("sigma,threshold", [(4, 0.69), (3, 0.68), (2, 0.68)])
def test_canny_equals_opencv(sigma, threshold):
    u8 = _liquid_u8(sigma, threshold)
    ref = _each(u8, lambda a: cv2.Canny(a, 50, 150)) > 0
    assert ref.any()
    np.testing.assert_array_equal(_drops.canny(u8, 50, 150)[:, 0].numpy(), ref)


def test_distance_equals_opencv_precise_transform():
    edges = _each(_liquid_u8(2, 0.68), lambda a: cv2.Canny(a, 50, 150))
    ours = _drops.distance_to_edges(torch.from_numpy(edges > 0)[:, None], 20.0)[:, 0].numpy()
    ref = np.stack([np.minimum(cv2.distanceTransform(255 - e, cv2.DIST_L2, cv2.DIST_MASK_PRECISE), 20)
                    for e in edges])
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_no_edges_gives_the_cap():
    assert torch.all(_drops.distance_to_edges(torch.zeros(1, 1, 8, 9, dtype=torch.bool), 20.0) == 20)


def test_equalize_hist_equals_opencv():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.floor(torch.rand(3, 1, 40, 50, generator=g) ** 2 * 21), torch.full((1, 1, 40, 50), 7.0)])
    np.testing.assert_array_equal(_drops.equalize_hist(x)[:, 0].numpy(), _each(x, cv2.equalizeHist))


def test_box_and_emboss_equal_opencv():
    x = torch.floor(torch.rand(2, 1, 30, 41, generator=torch.Generator().manual_seed(1)) * 256)
    np.testing.assert_array_equal(_drops.box3(x).round()[:, 0].numpy(), _each(x, lambda a: cv2.blur(a, (3, 3))))
    kernel = np.array(_drops._EMBOSS)
    ours = _drops._correlate3(x, _drops._EMBOSS, "reflect").round().clamp(0, 255)[:, 0].numpy()
    np.testing.assert_array_equal(ours, _each(x, lambda a: cv2.filter2D(a, cv2.CV_8U, kernel)))
