"""Slow, obvious re-statements of the reference equations, for the equivalence tests.

Written from ``/work/shared/spec/reference-implementations.md`` sections 1-3 with plain
``F.conv2d`` / ``F.layer_norm`` only: nothing here calls :mod:`stpl`. Each function takes
the cell's parameters as a ``{name: tensor}`` dict (``dict(cell.named_parameters())``), so a
parameter that the cell uses under another role than its name says makes the tests fail.

A "gate conv" ``p[name]`` is ``conv(name.0.weight, name.0.bias)`` followed, if
``name.1.weight`` exists, by a layer norm over ``(C, H, W)`` with affine ``name.1.*``:
per element if the affine is ``(C, H, W)``, per channel if it is ``(C,)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = dict[str, Tensor]
EPS = 1e-5


def layer_norm(y: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Normalise ``y: (B, C, H, W)`` over ``(C, H, W)``; affine per element or per channel."""
    if weight.dim() == 3:
        return F.layer_norm(y, y.shape[1:], weight, bias, EPS)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    var = y.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    return (y - mean) / torch.sqrt(var + EPS) * weight[:, None, None] + bias[:, None, None]


def gate_conv(p: Params, name: str, x: Tensor) -> Tensor:
    w = p[f"{name}.0.weight"]
    y = F.conv2d(x, w, p.get(f"{name}.0.bias"), padding=w.shape[-1] // 2)
    if f"{name}.1.weight" in p:
        y = layer_norm(y, p[f"{name}.1.weight"], p[f"{name}.1.bias"])
    return y


def convlstm(
    p: Params,
    x: Tensor,
    h: Tensor,
    c: Tensor,
    *,
    forget_bias: float = 0.0,
    gate_order: str = "ifgo",
    peephole: bool = False,
) -> tuple[Tensor, Tensor]:
    """Section 1 (OpenSTL / ndrplz) plus Shi et al.'s peepholes ``w_c{i,f,o}``."""
    chunks = dict(
        zip(
            gate_order,
            torch.chunk(gate_conv(p, "conv_x", x) + gate_conv(p, "conv_h", h), 4, 1),
            strict=True,
        )
    )
    i, f, g, o = chunks["i"], chunks["f"], chunks["g"], chunks["o"]
    if peephole:
        w_ci, w_cf, w_co = p["peephole_weight"]
        i = i + w_ci * c
        f = f + w_cf * c
    c_new = torch.sigmoid(f + forget_bias) * c + torch.sigmoid(i) * torch.tanh(g)
    if peephole:
        o = o + w_co * c_new
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


def stlstm(
    p: Params,
    x: Tensor,
    h: Tensor,
    c: Tensor,
    m: Tensor,
    a: Tensor | None = None,
    *,
    forget_bias: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Section 2a/2d; returns ``(h', c', m', Δc, Δm)``."""
    i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = torch.chunk(gate_conv(p, "conv_x", x), 7, 1)
    hidden = gate_conv(p, "conv_h", h)
    if a is not None:
        hidden = hidden * gate_conv(p, "conv_a", a)
    i_h, f_h, g_h, o_h = torch.chunk(hidden, 4, 1)
    i_m, f_m, g_m = torch.chunk(gate_conv(p, "conv_m", m), 3, 1)
    i = torch.sigmoid(i_x + i_h)
    f = torch.sigmoid(f_x + f_h + forget_bias)
    g = torch.tanh(g_x + g_h)
    delta_c = i * g
    c_new = f * c + delta_c
    i_p = torch.sigmoid(i_xp + i_m)
    f_p = torch.sigmoid(f_xp + f_m + forget_bias)
    g_p = torch.tanh(g_xp + g_m)
    delta_m = i_p * g_p
    m_new = f_p * m + delta_m
    mem = torch.cat([c_new, m_new], 1)
    o = torch.sigmoid(o_x + o_h + gate_conv(p, "conv_o", mem))
    h_new = o * torch.tanh(F.conv2d(mem, p["conv_last.weight"], p.get("conv_last.bias")))
    return h_new, c_new, m_new, delta_c, delta_m


def dcb(
    p: Params,
    x: Tensor,
    h: Tensor,
    *,
    prefix: str = "",
    n_kernels: int = 3,
    rounds: int = 5,
    scale: float = 2.0,
    reduction: str = "mean",
    first: str = "x",
    share_weights: bool = True,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Section 3b; returns ``(x_hat, h_hat, attention maps in round order)``.

    Round r (1-based) updates ``first`` when r is odd, the other state when r is even;
    ``h_branches.j`` read h and gate x, ``x_branches.j`` read x and gate h, where j counts
    the previous updates of the same state (always 0 with shared weights).
    """
    maps = []
    updates = {"x": 0, "h": 0}
    for r in range(1, rounds + 1):
        target = first if r % 2 == 1 else ("h" if first == "x" else "x")
        j = 0 if share_weights else updates[target]
        updates[target] += 1
        source = h if target == "x" else x
        reader = "h" if target == "x" else "x"
        branches = [
            gate_conv(p, f"{prefix}{reader}_branches.{j}.{b}", source) for b in range(n_kernels)
        ]
        total = torch.stack(branches).sum(0)
        if reduction == "mean":
            total = total / n_kernels
        attn = torch.sigmoid(total)
        maps.append(attn)
        if target == "x":
            x = scale * attn * x
        else:
            h = scale * attn * h
    return x, h, maps


def modernn(
    p: Params,
    x: Tensor,
    h: Tensor,
    c: Tensor,
    *,
    forget_bias: float = 1.0,
    **dcb_options: object,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Section 3c; returns ``(h', c', DCB maps)``.

    ``c'`` is layer-normed iff the cell has ``norm_cell``.
    """
    x_hat, h_hat, maps = dcb(p, x, h, prefix="dcb.", **dcb_options)  # type: ignore[arg-type]
    gates = gate_conv(p, "conv_x", x_hat) + gate_conv(p, "conv_h", h_hat)
    i, f, g, o = torch.chunk(gates, 4, 1)
    c_new = torch.sigmoid(f + forget_bias) * c + torch.sigmoid(i) * torch.tanh(g)
    if "norm_cell.weight" in p:
        c_new = layer_norm(c_new, p["norm_cell.weight"], p["norm_cell.bias"])
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new, maps


# -- helpers shared by the cell tests ------------------------------------------------------


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Redraw every parameter, so that no weight keeps a special value (ones, zeros).

    Conv weights ~ U(-1, 1)/sqrt(fan_in); norm weights ~ U(0.5, 1.5);
    biases and peepholes ~ U(-0.5, 0.5).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        u = torch.rand(param.shape, generator=gen, dtype=torch.float64)
        if param.dim() == 4 and "peephole" not in name:
            fan_in = param.shape[1] * param.shape[2] * param.shape[3]
            value = (2 * u - 1) / fan_in**0.5
        elif name.endswith("weight") and "peephole" not in name:
            value = 0.5 + u
        else:
            value = u - 0.5
        param.copy_(value)
    return module


def rand_maps(
    n: int, shape: Sequence[int], *, dtype: torch.dtype = torch.float64, seed: int = 1
) -> list[Tensor]:
    """``n`` standard normal tensors of ``shape``."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(dtype) for _ in range(n)
    ]


# bf16 keeps 8 significant bits (relative spacing 2^-7). Over two steps of the cells of
# tests/test_cells_common.py (25 random initialisations), outputs land within 1 % of float32
# (norm-wise), the input gradients and all parameter gradients taken together within 2 %;
# the bounds leave about 3x room, while a wrong path (a dropped term, a state cast back
# wrongly) is off by O(1). A single small parameter's gradient can be off by 20 % (sums that
# cancel, e.g. MoDeRNN's norm biases): bound the concatenated gradients, not each one.
BF16_OUTPUT_RTOL = 0.03
BF16_GRAD_RTOL = 0.05


def assert_bf16_close(low: Tensor, ref: Tensor, rtol: float, what: str = "") -> None:
    """``||low - ref|| <= rtol * ||ref||`` (Frobenius), ``low`` a bf16 (or autocast) result
    and ``ref`` the same computation in float32."""
    err = (low.double() - ref.double()).norm().item()
    scale = ref.double().norm().item()
    assert err <= rtol * scale, f"{what}: relative error {err / scale:.4f} > {rtol}"


def flat(tensors: Sequence[Tensor | None]) -> Tensor:
    """The non-``None`` tensors flattened into one vector (float64)."""
    return torch.cat([t.double().flatten() for t in tensors if t is not None])
