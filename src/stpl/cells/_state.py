"""Public state types carried from one time step to the next."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = [
    "LSTMState",
    "STLSTMState",
]


class LSTMState(NamedTuple):
    """State of a ConvLSTM-type cell (:class:`ConvLSTMCell`, :class:`MoDeRNNCell`).

    Attributes:
        h: hidden state, ``(B, C_hidden, H, W)``.
        c: cell state, ``(B, C_hidden, H, W)``.
    """

    h: Tensor
    c: Tensor


class STLSTMState(NamedTuple):
    """State of a spatiotemporal LSTM (:class:`STLSTMCell`).

    Attributes:
        h: hidden state, ``(B, C_hidden, H, W)``.
        c: temporal cell state, ``(B, C_hidden, H, W)``.
        m: spatiotemporal memory, ``(B, C_hidden, H, W)``; a stack passes it zigzag.
    """

    h: Tensor
    c: Tensor
    m: Tensor
