"""Slow, obvious re-statements of the nowcasting equations (spec ``nowcasting.md`` sections
1-3), for the equivalence tests. Nothing here calls :mod:`stpl`.

Parameters come as ``{name: tensor}`` dicts under the reference's names (``i2h.weight``, ...).
The TrajGRU warp is an explicit bilinear interpolation with gathers (no ``grid_sample``), in
both corner conventions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]


def lrelu(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.2 * x)


def conv(p: Params, name: str, x: Tensor, dilation: int = 1) -> Tensor:
    w = p[f"{name}.weight"]
    pad = dilation * (w.shape[-1] - 1) // 2
    return F.conv2d(x, w, p.get(f"{name}.bias"), padding=pad, dilation=dilation)


def gru_update(x_terms: tuple[Tensor, Tensor, Tensor] | None, h_terms: Tensor, h: Tensor) -> Tensor:
    """Section 1's update from the (reset, update, new) chunks of the input and state terms."""
    h_r, h_u, h_m = torch.chunk(h_terms, 3, dim=1)
    if x_terms is None:
        r = torch.sigmoid(h_r)
        u = torch.sigmoid(h_u)
        cand = lrelu(r * h_m)
    else:
        x_r, x_u, x_m = x_terms
        r = torch.sigmoid(x_r + h_r)
        u = torch.sigmoid(x_u + h_u)
        cand = lrelu(x_m + r * h_m)
    return u * h + (1 - u) * cand


def convgru(p: Params, x: Tensor | None, h: Tensor, dilation: int = 1) -> Tensor:
    x_terms = None if x is None else tuple(torch.chunk(conv(p, "i2h", x), 3, dim=1))
    return gru_update(x_terms, conv(p, "h2h", h, dilation), h)  # type: ignore[arg-type]


def bilinear(h: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Sample ``h: (B, C, H, W)`` at pixel coordinates ``px, py: (B, H, W)``; zeros outside."""
    b, c, height, width = h.shape
    x0, y0 = torch.floor(px), torch.floor(py)
    out = torch.zeros_like(h)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wx = 1 - (px - xi).abs()
            wy = 1 - (py - yi).abs()
            inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
            xc = xi.clamp(0, width - 1).long()
            yc = yi.clamp(0, height - 1).long()
            flat = (yc * width + xc).view(b, 1, -1).expand(b, c, -1)
            values = torch.gather(h.reshape(b, c, -1), 2, flat).view(b, c, height, width)
            out = out + values * (wx * wy * inside)[:, None]
    return out


def warp_link(h: Tensor, u: Tensor, v: Tensor, align_corners: bool) -> Tensor:
    """Sample ``h`` at ``(x - U, y - V)`` as the references do (normalised by
    ``max(W - 1, 1)``, then read back by grid_sample's rule for ``align_corners``)."""
    _, _, height, width = h.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=h.dtype), torch.arange(width, dtype=h.dtype), indexing="ij"
    )
    gx = 2 * (xs - u) / max(width - 1, 1) - 1
    gy = 2 * (ys - v) / max(height - 1, 1) - 1
    if align_corners:
        px, py = (gx + 1) / 2 * (width - 1), (gy + 1) / 2 * (height - 1)
    else:
        px, py = ((gx + 1) * width - 1) / 2, ((gy + 1) * height - 1) / 2
    return bilinear(h, px, py)


def trajgru_flows(p: Params, x: Tensor | None, h: Tensor) -> Tensor:
    f = conv(p, "h2f_conv1", h)
    if x is not None:
        f = f + conv(p, "i2f_conv1", x)
    return conv(p, "flows_conv", lrelu(f))


def trajgru(p: Params, x: Tensor | None, h: Tensor, align_corners: bool = True) -> Tensor:
    flows = trajgru_flows(p, x, h)
    links = flows.shape[1] // 2
    warped = torch.cat(
        [warp_link(h, flows[:, 2 * k], flows[:, 2 * k + 1], align_corners) for k in range(links)],
        dim=1,
    )  # link-major: index l * nh + c
    h_terms = F.conv2d(warped, p["ret.weight"], p["ret.bias"])
    x_terms = None if x is None else tuple(torch.chunk(conv(p, "i2h", x), 3, dim=1))
    return gru_update(x_terms, h_terms, h)  # type: ignore[arg-type]
