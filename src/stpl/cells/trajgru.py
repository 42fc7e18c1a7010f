"""TrajGRU (Shi et al., NeurIPS 2017): a GRU whose state connections follow learned flows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl._validation import check_bool, check_int
from stpl.cells._toolkit import (
    Device,
    check_kernel_size,
    check_positive_int,
    factory_kwargs,
    reset_module_parameters,
    zeros_like_map,
)
from stpl.cells.convgru import (
    Activation,
    GRUState,
    Init,
    check_gru_options,
    gru_activation,
    gru_state,
    gru_update,
    hko7_init_,
)

__all__ = ["TrajGRUCell", "warp"]


def warp(h: Tensor, flows: Tensor, *, align_corners: bool = True) -> Tensor:
    """Sample ``h`` along ``L`` flow fields: link ``l`` reads ``h`` at ``p - flow_l(p)``.

    ``flows: (B, 2L, H, W)`` holds ``(U_l, V_l)`` in channels ``(2l, 2l + 1)``: the x (width)
    and y (height) offsets in pixels of ``h``. The sampling point of pixel ``(x, y)`` is
    normalised as both references do, ``2 (x - U) / max(W - 1, 1) - 1`` (likewise for y),
    and bilinearly interpolated with zeros outside the map. ``align_corners=True`` reads
    that as ``-1 -> pixel 0, +1 -> pixel W - 1``, the official (MXNet ``BilinearSampler``)
    convention, under which a zero flow is the identity; ``align_corners=False`` is what
    the PyTorch port computes on PyTorch >= 1.3 (``grid_sample`` without the argument).

    The grid and the sampling are computed in at least float32 (under autocast too: a
    bfloat16 grid would misplace samples by a fraction of a pixel); the result has ``h``'s
    dtype.

    Args:
        h: ``(B, C, H, W)``.
        flows: ``(B, 2L, H, W)``.
        align_corners: the corner convention, see above.

    Returns:
        ``(B, C, L * H, W)``: channel ``c`` holds the ``L`` warped maps of channel ``c``
        stacked along the height (viewed as ``(B, C * L, H, W)`` it is channel-major,
        index ``c * L + l``; :class:`TrajGRUCell` permutes its 1x1 weights to match, so no
        copy of the warped maps is made).
    """
    b, _, height, width = h.shape
    links = flows.shape[1] // 2
    dtype = torch.promote_types(flows.dtype, torch.float32)
    f = flows.to(dtype).view(b, links, 2, height, width)
    sx = 2.0 / max(width - 1, 1)
    sy = 2.0 / max(height - 1, 1)
    xs = torch.arange(width, device=h.device, dtype=dtype) * sx - 1.0
    ys = torch.arange(height, device=h.device, dtype=dtype) * sy - 1.0
    gx = xs - f[:, :, 0] * sx  # (B, L, H, W)
    gy = ys[:, None] - f[:, :, 1] * sy
    grid = torch.stack((gx, gy), dim=-1).view(b, links * height, width, 2)
    out = F.grid_sample(
        h.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners
    )
    return out.to(h.dtype)


class TrajGRUCell(nn.Module):
    r"""One step of a trajectory GRU (TrajGRU).

    With ``act`` = LeakyReLU(0.2) by default and ``L`` links::

        F     = act(i2f_conv1 * x + h2f_conv1 * h)          # no input: act(h2f_conv1 * h)
        flows = flows_conv * F                              # (B, 2L, H, W), pixels of h
        W_l   = h sampled at p - (U_l(p), V_l(p)), l < L    # bilinear, zeros outside
        [h_r, h_u, h_m] = split3(ret * concat_l W_l)        # 1x1 conv, link-major order
        [x_r, x_u, x_m] = split3(i2h * x)                   # absent when x is None
        r  = σ(x_r + h_r);  u = σ(x_u + h_u)
        h~ = act(x_m + r ⊙ h_m)
        h' = u ⊙ h + (1 - u) ⊙ h~

    Kernels: ``i2h`` ``i2h_kernel_size`` (3), ``i2f_conv1``, ``h2f_conv1`` and
    ``flows_conv`` ``flow_kernel_size`` (5) with ``flow_channels`` (32) features, ``ret``
    1x1; all "same" padded, all with biases. A step without input (``x=None``) drops the
    ``x`` terms; ``in_channels=0`` builds a cell without input weights.

    Paper: Shi et al., "Deep Learning for Precipitation Nowcasting: A Benchmark and A New
    Model", NeurIPS 2017. References: sxjscience/HKO-7 ``nowcasting/operators/traj_rnn.py``
    (official, MXNet) and Hzzone/Precipitation-Nowcasting ``nowcasting/models/trajGRU.py``
    (the PyTorch port); parameter names and shapes are the port's (official names:
    ``i2h``, ``i2f_conv1``, ``h2f_conv1``, ``f_out`` = ``flows_conv``, ``h2h`` = ``ret``).

    Corner convention (see :func:`warp`): ``align_corners=True`` (default) is the official
    warp, under which zero flows are the identity. The port calls ``grid_sample`` without
    ``align_corners``, which means ``False`` on PyTorch >= 1.3: its warp is then a slight
    zoom about the map centre even for zero flows. ``align_corners=False`` reproduces the
    port as it runs today (``stpl.interop.load_reference_cell("hzzone_trajgru", sd,
    align_corners=False)``).

    Other differences from the references: zoneout is not implemented (0 in every
    configuration; the port's zoneout > 0 crashes); ``kernel_size`` (the configurations'
    ``h2h_kernel``) is accepted and recorded but, as in both references, unused: TrajGRU has
    no state-to-state convolution besides the flows and the 1x1 ``ret``. Initialisation is
    PyTorch's (the port's, with random initial flows) unless ``init="hko7"`` (official:
    MSRAPrelu weights, zero biases, zero ``flows_conv`` so every link starts as the identity).

    Parameter count: ``3nh (C_in k_i^2 + 1) + F (C_in k_f^2 + 1) + F (nh k_f^2 + 1) +
    2L (F k_f^2 + 1) + 3nh (L nh + 1)`` (``F`` flow channels; without input weights the
    first two terms vanish); C_in 8, nh 64, L 13: 252,442.

    Args:
        in_channels: C_in of ``x``; 0 for a cell without input weights.
        hidden_channels: nh, channels of ``h``.
        kernel_size: the configurations' ``h2h_kernel``; unused (see above), must be odd.
        links: L, the number of flow fields (HKO-7: 13, 13, 9).
        i2h_kernel_size: odd kernel of the input-to-gates convolution.
        flow_channels: features of the flow generator (32 in both references).
        flow_kernel_size: odd kernel of the three flow-generator convolutions (5).
        align_corners: corner convention of the warp (``True``: official).
        activation: ``"leaky"`` or ``"tanh"`` (candidate and flow generator).
        negative_slope: slope of the LeakyReLU.
        init: ``"pytorch"`` or ``"hko7"``.
        zero_init_flows: with ``init="hko7"``, start ``flows_conv`` at zero (the official
            ``MODEL.TRAJRNN.INIT_GRID = True``, every link the identity warp); ``False``
            initialises it like the other convolutions (``INIT_GRID = False``). The flow
            generator's first convolutions get no gradient while ``flows_conv`` is zero.
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``x: (B, C_in, H, W)`` or ``None``, ``state.h: (B, nh, H, W)``; returns ``h'``
    and ``GRUState(h')``.
    """

    state_type = GRUState
    """The state this cell carries."""

    accepts_no_input = True
    """Steps with ``x=None`` are supported (a model needs no dummy input for them)."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        *,
        links: int = 5,
        i2h_kernel_size: int = 3,
        flow_channels: int = 32,
        flow_kernel_size: int = 5,
        align_corners: bool = True,
        activation: Activation = "leaky",
        negative_slope: float = 0.2,
        init: Init = "pytorch",
        zero_init_flows: bool = True,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=0)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.links = check_positive_int("links", links)
        self.i2h_kernel_size = check_kernel_size("i2h_kernel_size", i2h_kernel_size)
        self.flow_channels = check_positive_int("flow_channels", flow_channels)
        self.flow_kernel_size = check_kernel_size("flow_kernel_size", flow_kernel_size)
        self.align_corners = check_bool("align_corners", align_corners)
        self.activation, self.negative_slope, self.init = check_gru_options(
            activation, negative_slope, init
        )
        self.zero_init_flows = check_bool("zero_init_flows", zero_init_flows)
        factory = factory_kwargs(device, dtype)
        nh, fc, fk = self.hidden_channels, self.flow_channels, self.flow_kernel_size
        self.i2h: nn.Conv2d | None = None
        self.i2f_conv1: nn.Conv2d | None = None
        if self.in_channels:
            ik = self.i2h_kernel_size
            self.i2h = nn.Conv2d(self.in_channels, 3 * nh, ik, padding=ik // 2, **factory)
            self.i2f_conv1 = nn.Conv2d(self.in_channels, fc, fk, padding=fk // 2, **factory)
        self.h2f_conv1 = nn.Conv2d(nh, fc, fk, padding=fk // 2, **factory)
        self.flows_conv = nn.Conv2d(fc, 2 * self.links, fk, padding=fk // 2, **factory)
        self.ret = nn.Conv2d(self.links * nh, 3 * nh, 1, **factory)
        if self.init == "hko7":
            self._hko7_init()

    def _hko7_init(self) -> None:
        hko7_init_(self)
        if self.zero_init_flows:
            nn.init.zeros_(self.flows_conv.weight)
            assert self.flows_conv.bias is not None
            nn.init.zeros_(self.flows_conv.bias)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (``init`` decides how)."""
        reset_module_parameters(self)
        if self.init == "hko7":
            self._hko7_init()

    def initial_state(self, x: Tensor) -> GRUState:
        """Zero state for input ``x: (B, C, H, W)`` (device, dtype and layout of ``x``)."""
        return GRUState(zeros_like_map(x, self.hidden_channels))

    @property
    def projection_channels(self) -> int:
        """Channels of :meth:`input_projection`'s output (0 without input weights)."""
        return 3 * self.hidden_channels + self.flow_channels if self.in_channels else 0

    def input_projection(self, x: Tensor) -> Tensor:
        """The input terms of a step: ``cat[i2h * x, i2f_conv1 * x]``, ``(N, 3nh + F, H, W)``.

        Independent of the state, so a model can compute them for all time steps in one
        call (time folded into the batch) and pass each slice to :meth:`step`.
        """
        if self.i2h is None or self.i2f_conv1 is None:
            raise ValueError("this cell was built with in_channels=0: it has no input terms")
        return torch.cat([self.i2h(x), self.i2f_conv1(x)], dim=1)

    def flows(self, x: Tensor | None, h: Tensor) -> Tensor:
        """The flow fields ``(B, 2L, H, W)`` of a step (``x=None`` without input)."""
        projected = None if x is None else self.input_projection(x)
        return self._flows(projected, h)

    def _flows(self, projected: Tensor | None, h: Tensor) -> Tensor:
        f = self.h2f_conv1(h)
        if projected is not None:
            f = f + projected[:, 3 * self.hidden_channels :]
        flows: Tensor = self.flows_conv(gru_activation(f, self.activation, self.negative_slope))
        return flows

    def _ret_weight(self) -> Tensor:
        """``ret.weight`` with input channels reordered from link-major to channel-major."""
        w = self.ret.weight
        o = w.shape[0]
        return w.view(o, self.links, self.hidden_channels).transpose(1, 2).reshape(o, -1, 1, 1)

    def step(self, projected: Tensor | None, h: Tensor) -> tuple[Tensor, GRUState]:
        """One step from the input terms (:meth:`input_projection`, or ``None``) and ``h``.

        No checks: :meth:`forward` is the checked entry point.
        """
        nh = self.hidden_channels
        b, _, height, width = h.shape
        warped = warp(h, self._flows(projected, h), align_corners=self.align_corners)
        warped = warped.view(b, nh * self.links, height, width)
        h_terms = F.conv2d(warped, self._ret_weight(), self.ret.bias)
        h_next = gru_update(projected, h_terms, h, self.activation, self.negative_slope)
        return h_next, GRUState(h_next)

    def forward(self, x: Tensor | None, state: GRUState | None = None) -> tuple[Tensor, GRUState]:
        """One step: ``x: (B, C_in, H, W)`` or ``None``, ``state`` or ``None`` (zeros).

        Returns ``(h', GRUState(h'))``, each ``(B, nh, H, W)``.
        """
        h = gru_state(x, state, self.in_channels, self.hidden_channels, make_zero=True)
        projected = None if x is None else self.input_projection(x)
        return self.step(projected, h)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size} "
            f"(unused), links={self.links}, i2h_kernel_size={self.i2h_kernel_size}, "
            f"flow_channels={self.flow_channels}, flow_kernel_size={self.flow_kernel_size}, "
            f"align_corners={self.align_corners}, activation={self.activation!r}, "
            f"negative_slope={self.negative_slope}, init={self.init!r}"
            + ("" if self.init == "pytorch" else f", zero_init_flows={self.zero_init_flows}")
        )
