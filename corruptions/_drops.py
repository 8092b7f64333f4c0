"""Water-drop shading for ``spatter``: batched torch versions of the OpenCV steps the reference uses.

The reference shapes each drop with ``cv2.Canny`` -> ``cv2.distanceTransform`` -> truncation at 20 ->
3x3 box blur -> ``cv2.equalizeHist`` -> an emboss ``cv2.filter2D`` -> 3x3 box blur. Every function here
takes (B, 1, H, W) float tensors holding 8-bit values and works on all images of the batch at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TG22 = 13573  # round(tan(22.5 deg) * 2**15), OpenCV's fixed-point direction test
_EMBOSS = ((-2.0, -1.0, 0.0), (-1.0, 1.0, 1.0), (0.0, 1.0, 2.0))


def _neighbours(x: torch.Tensor, pad_mode: str, value: float = 0.0) -> torch.Tensor:
    """(B, 1, H + 2, W + 2) padded copy; ``pad_mode`` as in ``F.pad`` ("constant", "replicate", "reflect")."""
    if pad_mode == "constant":
        return F.pad(x, (1, 1, 1, 1), value=value)
    if pad_mode == "reflect" and min(x.shape[-2:]) < 2:
        pad_mode = "replicate"
    return F.pad(x, (1, 1, 1, 1), mode=pad_mode)


def _correlate3(x: torch.Tensor, kernel: tuple[tuple[float, ...], ...], pad_mode: str) -> torch.Tensor:
    """3x3 correlation (OpenCV ``filter2D`` orientation) as nine shifted adds, no per-image work."""
    p = _neighbours(x, pad_mode)
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for i, row in enumerate(kernel):
        for j, k in enumerate(row):
            if k:
                out.add_(p[..., i:i + h, j:j + w], alpha=k)
    return out


def box3(x: torch.Tensor) -> torch.Tensor:
    """``cv2.blur(x, (3, 3))``: 3x3 mean with reflect-101 borders (float result)."""
    return _correlate3(x, ((1.0,) * 3,) * 3, "reflect") / 9


def canny(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``cv2.Canny(x, low, high)`` (aperture 3, L1 gradient) as a bool edge map.

    Sobel on edge-replicated borders, OpenCV's fixed-point non-maximum suppression (zero magnitude outside
    the image), then hysteresis: weak pixels 8-connected to a strong one, grown until nothing changes.
    """
    p = _neighbours(x, "replicate")
    h, w = x.shape[-2:]

    def at(i: int, j: int) -> torch.Tensor:
        return p[..., i:i + h, j:j + w]

    dx = (at(0, 2) - at(0, 0)) + 2 * (at(1, 2) - at(1, 0)) + (at(2, 2) - at(2, 0))
    dy = (at(2, 0) - at(0, 0)) + 2 * (at(2, 1) - at(0, 1)) + (at(2, 2) - at(0, 2))
    dx, dy = dx.round().to(torch.int32), dy.round().to(torch.int32)
    ax, ay = dx.abs(), dy.abs()
    mag = ax + ay
    m = _neighbours(mag, "constant")

    def nb(i: int, j: int) -> torch.Tensor:
        return m[..., i:i + h, j:j + w]

    tg22x = ax * _TG22
    y15 = ay * (1 << 15)
    horizontal = y15 < tg22x
    vertical = ~horizontal & (y15 > tg22x + ax * (1 << 16))
    opposite = (dx < 0) != (dy < 0)  # OpenCV: (dx ^ dy) < 0 -> s = -1
    keep_h = (mag > nb(1, 0)) & (mag >= nb(1, 2))
    keep_v = (mag > nb(0, 1)) & (mag >= nb(2, 1))
    keep_d = torch.where(opposite, (mag > nb(0, 2)) & (mag > nb(2, 0)), (mag > nb(0, 0)) & (mag > nb(2, 2)))
    keep = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d))
    weak = keep & (mag > int(low))
    edges = weak & (mag > int(high))
    # growing past the fixed point changes nothing, so off the CPU several steps run per host sync
    steps = 1 if edges.device.type == "cpu" else 8
    while True:
        grown = edges
        for _ in range(steps):
            grown = weak & (F.max_pool2d(grown.to(torch.float32), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def distance_to_edges(edges: torch.Tensor, cap: float) -> torch.Tensor:
    """Euclidean distance of every pixel to the nearest edge pixel, truncated at ``cap`` (float, (B,1,H,W)).

    Exact separable transform: 1-D distances along rows from running max/min of edge positions, then the
    column pass as a minimum over the ``2*cap + 1`` vertical offsets that can still be under the cap.
    (The reference's ``DIST_L2`` with mask 5 is OpenCV's chamfer approximation of the same distance.)
    """
    h, w = edges.shape[-2:]
    far = float(cap) + 1
    col = torch.arange(w, device=edges.device, dtype=torch.float32)
    before = torch.where(edges, col, torch.full_like(col, -1e9)).cummax(-1).values
    after = torch.where(edges, col, torch.full_like(col, 1e9)).flip(-1).cummin(-1).values.flip(-1)
    row_dist = torch.minimum(col - before, after - col).clamp_(max=far)
    g2 = row_dist.square()
    best = g2.clone()
    for k in range(1, min(int(cap), h - 1) + 1):
        torch.minimum(best[..., k:, :], g2[..., :-k, :] + k * k, out=best[..., k:, :])
        torch.minimum(best[..., :-k, :], g2[..., k:, :] + k * k, out=best[..., :-k, :])
    return best.sqrt_().clamp_(max=cap)


def equalize_hist(x: torch.Tensor) -> torch.Tensor:
    """``cv2.equalizeHist`` per image: 8-bit values mapped through the image's own cumulative histogram."""
    b = x.shape[0]
    v = x.reshape(b, -1).long()
    levels = torch.arange(257, device=x.device).expand(b, 257).contiguous()
    # counts from a sort, not an atomic scatter: deterministic on every device
    hist = torch.searchsorted(v.sort(dim=1).values, levels).diff(dim=1).double()
    total = v.shape[1]
    first = (hist > 0).to(torch.int8).argmax(1, keepdim=True)
    first_count = hist.gather(1, first)
    cumulative = hist.cumsum(1)
    cdf = cumulative - cumulative.gather(1, first)
    scale = 255.0 / (total - first_count).clamp_min(1)
    lut = (cdf * scale).round().clamp_(0, 255)
    lut = torch.where(first_count == total, first.to(lut.dtype).expand_as(lut), lut)  # flat image: unchanged
    return lut.gather(1, v).reshape(x.shape).to(x.dtype)


def drop_shading(liquid_u8: torch.Tensor) -> torch.Tensor:
    """The reference's per-pixel drop texture ``dist`` (float, 0..255) for an 8-bit liquid layer."""
    edges = canny(liquid_u8, 50, 150)
    dist = distance_to_edges(edges, 20.0)
    dist = box3(dist).floor_()  # float32 blur, then numpy's astype(uint8) truncation
    dist = equalize_hist(dist)
    dist = _correlate3(dist, _EMBOSS, "reflect").round_().clamp_(0, 255)  # filter2D to CV_8U saturates
    return box3(dist).round_()  # 8-bit blur rounds
