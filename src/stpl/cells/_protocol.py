"""The protocol a recurrent cell implements to sit in a stpl stack.

Every cell of :mod:`stpl.cells` follows it, and so can a cell of your own: give it these
attributes and methods and :class:`stpl.EncoderStackDecoder` stacks it like a built-in one
(``cell=lambda c_in, c_hidden: MyCell(c_in, c_hidden)``, or ``layer=`` as a third
argument to build a different cell per layer).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["RecurrentCell"]


@runtime_checkable
class RecurrentCell(Protocol):
    """One time step of a spatiotemporal recurrent cell: ``h, state = cell(x, state)``.

    Required:
        in_channels: C_in of ``x``.
        hidden_channels: C_hidden of the hidden map ``h`` the cell returns (the next layer
            reads it).
        __call__(x, state=None): ``x: (B, C_in, H, W)``; ``state`` a tuple of tensors (a
            NamedTuple such as :class:`stpl.LSTMState`) or ``None`` for a zero state built
            like ``x`` (device, dtype). Returns ``(h, new_state)`` with
            ``h: (B, C_hidden, H, W)``.
        initial_state(x): the zero state for input ``x`` (what ``state=None`` means).

    Optional (read with ``getattr``):
        state_type: the NamedTuple class of the state. A stack uses it to reject a state
            built by another cell type with a clear error.
        zigzag_memory: ``True`` if the state carries a spatiotemporal memory in a field
            named ``m`` (third position) that a stack passes zigzag (PredRNN): layer l at
            step t reads it from layer l-1 at step t, layer 0 from the top layer at t-1.
            The stack starts each layer from ``initial_state(x)`` and replaces ``m``. All
            layers then need equal ``hidden_channels``.
        forward_with_increments(x, state): PredRNN-V2's ``(h, state, delta_c, delta_m)``,
            for ``decoupling=True``.
        reset_parameters(): re-initialise every parameter (used after building on the
            ``meta`` device).
    """

    in_channels: int
    hidden_channels: int

    def __call__(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]: ...

    def initial_state(self, x: Tensor) -> Any: ...
