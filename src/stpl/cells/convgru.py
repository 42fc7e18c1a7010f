"""ConvGRU (Shi et al., NeurIPS 2017): the convolutional GRU of the HKO-7 benchmark.

Also home of what both GRU cells of :mod:`stpl.cells` share (:class:`GRUState`, the
activation, the official initialisation and the state checks of a step without input);
:mod:`stpl.cells.trajgru` imports them from here.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl._validation import check_choice, check_int, check_real
from stpl.cells._toolkit import (
    Device,
    check_kernel_size,
    check_map,
    check_positive_int,
    check_state,
    check_state_map,
    factory_kwargs,
    reset_module_parameters,
    zeros_like_map,
)

__all__ = ["Activation", "ConvGRUCell", "GRUState", "Init"]

Activation = Literal["leaky", "tanh"]
"""Activation of the candidate state (and of TrajGRU's flow generator): ``"leaky"``
(LeakyReLU, slope ``negative_slope``, every released HKO-7 configuration) or ``"tanh"``."""

Init = Literal["pytorch", "hko7"]
"""Parameter initialisation: ``"pytorch"`` (``nn.Conv2d``'s default, what the PyTorch port
does) or ``"hko7"`` (the official MXNet code's: ``MSRAPrelu(slope=0.2)`` Gaussian weights,
zero biases, and for TrajGRU zero flow weights, i.e. every link starts as the identity)."""

_ACTIVATIONS = ("leaky", "tanh")
_INITS = ("pytorch", "hko7")


class GRUState(NamedTuple):
    """State of a GRU cell (:class:`ConvGRUCell`, :class:`TrajGRUCell`).

    Attributes:
        h: hidden state, ``(B, C_hidden, H, W)``.
    """

    h: Tensor


def gru_activation(x: Tensor, activation: str, negative_slope: float) -> Tensor:
    """The candidate activation: ``max(x, slope * x)`` (``"leaky"``) or ``tanh(x)``."""
    if activation == "leaky":
        return F.leaky_relu(x, negative_slope)
    return torch.tanh(x)


def gru_update(
    x_terms: Tensor | None,
    h_terms: Tensor,
    h: Tensor,
    activation: str,
    negative_slope: float,
) -> Tensor:
    """The GRU update from its input and hidden terms (ConvGRU's and TrajGRU's equations).

    ``x_terms`` and ``h_terms`` hold the reset, update and candidate terms in that order
    (``(B, 3 nh, H, W)``; ``x_terms`` may carry more channels after those, and is ``None``
    for a step without input); ``h``: ``(B, nh, H, W)``. Returns
    ``h' = u * h + (1 - u) * f(x_m + r * h_m)``.
    """
    nh = h.shape[1]
    h_r, h_u, h_m = torch.split(h_terms, nh, dim=1)
    if x_terms is None:
        r = torch.sigmoid(h_r)
        u = torch.sigmoid(h_u)
        cand = gru_activation(r * h_m, activation, negative_slope)
    else:
        x_r, x_u, x_m = torch.split(x_terms[:, : 3 * nh], nh, dim=1)
        r = torch.sigmoid(x_r + h_r)
        u = torch.sigmoid(x_u + h_u)
        cand = gru_activation(x_m + r * h_m, activation, negative_slope)
    return cand + u * (h - cand)  # u ⊙ h + (1 - u) ⊙ h~ (dtypes promote under autocast)


@torch.no_grad()
def msra_prelu_(weight: Tensor, slope: float = 0.2) -> Tensor:
    """MXNet's ``MSRAPrelu(factor_type="avg", slope)`` initialiser, in place.

    Gaussian with standard deviation ``sqrt(2 / (1 + slope^2) / ((fan_in + fan_out) / 2))``,
    ``fan_in = shape[1] * prod(kernel)``, ``fan_out = shape[0] * prod(kernel)`` (what the
    official HKO-7 code initialises its convolutions and deconvolutions with).
    """
    receptive = math.prod(weight.shape[2:])
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    std = math.sqrt(2.0 / (1.0 + slope**2) / ((fan_in + fan_out) / 2.0))
    return weight.normal_(0.0, std)


def hko7_init_(module: nn.Module, slope: float = 0.2) -> None:
    """Initialise every convolution below ``module`` as the official HKO-7 code does.

    Weights of ``nn.Conv2d`` / ``nn.ConvTranspose2d`` layers: :func:`msra_prelu_`; biases: 0.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            msra_prelu_(layer.weight, slope)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def check_gru_options(
    activation: object, negative_slope: object, init: object
) -> tuple[str, float, str]:
    """Validate the options both GRU cells share; returns them."""
    check_choice("activation", activation, _ACTIVATIONS)
    slope = check_real("negative_slope", negative_slope)
    check_choice("init", init, _INITS)
    return str(activation), slope, str(init)


def gru_state(
    x: Tensor | None, state: object, in_channels: int, hidden_channels: int, make_zero: bool
) -> Tensor:
    """Validate ``x`` and ``state`` of a GRU step and return the hidden map ``h``.

    ``x=None`` is a step without input: then ``state`` must be given (there is nothing to
    build a zero state from). A cell built with ``in_channels=0`` has no input weights and
    only takes ``x=None``.
    """
    if x is None:
        if state is None:
            raise ValueError(
                "state must be given for a step without input (x=None): the zero state is "
                "built from x"
            )
        h = check_state("state", state, GRUState)[0]
        if not isinstance(h, Tensor):
            raise TypeError(f"state.h must be a torch.Tensor; got {type(h).__name__}")
        if h.dim() != 4 or h.shape[1] != hidden_channels:
            raise ValueError(
                f"state.h must be (B, {hidden_channels}, H, W); got shape {tuple(h.shape)}"
            )
        if not h.is_floating_point():
            raise ValueError(f"state.h must be a floating tensor; got dtype {h.dtype}")
        return h
    if in_channels == 0:
        raise ValueError(
            "x must be None: this cell was built with in_channels=0 (no input weights, "
            f"like the top block of a forecaster); got a tensor of shape {tuple(x.shape)}"
        )
    check_map("x", x, in_channels)
    if state is None:
        if not make_zero:
            raise ValueError("state must be given")
        return zeros_like_map(x, hidden_channels)
    h = check_state("state", state, GRUState)[0]
    return check_state_map("state.h", h, x, hidden_channels)


class ConvGRUCell(nn.Module):
    r"""One step of a convolutional GRU, as the official HKO-7 code computes it.

    With :math:`*` a "same" convolution, :math:`\odot` the Hadamard product and
    ``act`` the activation (LeakyReLU(0.2) by default)::

        [x_r, x_u, x_m] = split3(W_i * x + b_i)         # absent when x is None
        [h_r, h_u, h_m] = split3(W_h * h + b_h)
        r  = σ(x_r + h_r)
        u  = σ(x_u + h_u)
        h~ = act(x_m + r ⊙ h_m)                          # b_h's third chunk sits inside r ⊙ (...)
        h' = u ⊙ h + (1 - u) ⊙ h~                        # u = 1 keeps the old state

    Chunk order of both convolutions: (reset, update, new memory). A step without input
    (``x=None``, the top block of an encoder-forecaster's forecaster) drops the ``x`` terms;
    a cell built with ``in_channels=0`` has no input weights at all and only takes such steps.

    Paper: Shi et al., "Deep Learning for Precipitation Nowcasting: A Benchmark and A New
    Model", NeurIPS 2017. Reference: sxjscience/HKO-7 ``nowcasting/operators/conv_rnn.py``
    (``ConvGRU``, MXNet); Hzzone/Precipitation-Nowcasting has no ConvGRU.

    Differences from the paper: the paper's GRU uses tanh; every released configuration of
    the official code uses LeakyReLU(0.2) (its docstring still says tanh), which is the
    default here (``activation="tanh"`` for the other). The reset gate multiplies
    ``W_h * h + b_h`` (cuDNN-style), not ``h`` before the convolution.
    Differences from the official code: zoneout (0 in every HKO-7 configuration, an identity
    at inference) and the transposed-convolution input (``use_deconv``, unused by the HKO
    and Moving MNIST++ configurations) are not implemented; initialisation is PyTorch's
    unless ``init="hko7"``.

    Parameters: ``i2h.weight (3 C_hidden, C_in, k_i, k_i)``, ``i2h.bias``, ``h2h.weight
    (3 C_hidden, C_hidden, k, k)``, ``h2h.bias``, the official parameters (``<prefix>_i2h_*``,
    ``<prefix>_h2h_*``) with the same shapes and chunk order; count
    ``3 C_hidden (C_in k_i^2 + 1) + 3 C_hidden (C_hidden k^2 + 1)``.

    Args:
        in_channels: C_in of ``x``; 0 for a cell without input weights.
        hidden_channels: C_hidden of ``h``.
        kernel_size: odd kernel ``k`` of the state-to-state convolution (HKO-7: 5, 5, 3).
        i2h_kernel_size: odd kernel ``k_i`` of the input convolution (HKO-7: 3).
        dilation: dilation of the state-to-state convolution (padding ``dilation (k-1)/2``).
        activation: ``"leaky"`` or ``"tanh"``.
        negative_slope: slope of the LeakyReLU.
        bias: biases on both convolutions (the official cell has them).
        init: ``"pytorch"`` or ``"hko7"`` (see :data:`Init`).
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``x: (B, C_in, H, W)`` or ``None``, ``state.h: (B, C_hidden, H, W)``; returns
    ``h'`` and ``GRUState(h')``.
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
        i2h_kernel_size: int = 3,
        dilation: int = 1,
        activation: Activation = "leaky",
        negative_slope: float = 0.2,
        bias: bool = True,
        init: Init = "pytorch",
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=0)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.i2h_kernel_size = check_kernel_size("i2h_kernel_size", i2h_kernel_size)
        self.dilation = check_positive_int("dilation", dilation)
        self.activation, self.negative_slope, self.init = check_gru_options(
            activation, negative_slope, init
        )
        factory = factory_kwargs(device, dtype)
        nh = self.hidden_channels
        self.i2h: nn.Conv2d | None = None
        if self.in_channels:
            self.i2h = nn.Conv2d(
                self.in_channels,
                3 * nh,
                self.i2h_kernel_size,
                padding=self.i2h_kernel_size // 2,
                bias=bias,
                **factory,
            )
        self.h2h = nn.Conv2d(
            nh,
            3 * nh,
            self.kernel_size,
            padding=self.dilation * (self.kernel_size - 1) // 2,
            dilation=self.dilation,
            bias=bias,
            **factory,
        )
        if self.init == "hko7":
            hko7_init_(self)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (``init`` decides how)."""
        reset_module_parameters(self)
        if self.init == "hko7":
            hko7_init_(self)

    def initial_state(self, x: Tensor) -> GRUState:
        """Zero state for input ``x: (B, C, H, W)`` (device, dtype and layout of ``x``)."""
        return GRUState(zeros_like_map(x, self.hidden_channels))

    @property
    def projection_channels(self) -> int:
        """Channels of :meth:`input_projection`'s output (0 without input weights)."""
        return 3 * self.hidden_channels if self.in_channels else 0

    def input_projection(self, x: Tensor) -> Tensor:
        """The input terms of a step, ``(N, 3 C_hidden, H, W)`` for ``x: (N, C_in, H, W)``.

        Independent of the state, so a model can compute them for all time steps in one
        convolution (time folded into the batch) and pass each slice to :meth:`step`.
        """
        if self.i2h is None:
            raise ValueError("this cell was built with in_channels=0: it has no input terms")
        out: Tensor = self.i2h(x)
        return out

    def step(self, projected: Tensor | None, h: Tensor) -> tuple[Tensor, GRUState]:
        """One step from the input terms (:meth:`input_projection`, or ``None``) and ``h``.

        No checks: :meth:`forward` is the checked entry point.
        """
        h_next = gru_update(projected, self.h2h(h), h, self.activation, self.negative_slope)
        return h_next, GRUState(h_next)

    def forward(self, x: Tensor | None, state: GRUState | None = None) -> tuple[Tensor, GRUState]:
        """One step: ``x: (B, C_in, H, W)`` or ``None``, ``state`` or ``None`` (zeros).

        Returns ``(h', GRUState(h'))``, each ``(B, C_hidden, H, W)``.
        """
        h = gru_state(x, state, self.in_channels, self.hidden_channels, make_zero=True)
        projected = None if x is None else self.input_projection(x)
        return self.step(projected, h)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"i2h_kernel_size={self.i2h_kernel_size}, dilation={self.dilation}, "
            f"activation={self.activation!r}, negative_slope={self.negative_slope}, "
            f"bias={self.h2h.bias is not None}, init={self.init!r}"
        )
