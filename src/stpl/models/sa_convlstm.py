"""SA-ConvLSTM (AAAI 2020) as a video predictor: the preset ``"sa_convlstm"``.

The model is :class:`~stpl.EncoderStackDecoder` with :class:`~stpl.SAConvLSTMCell` layers
(``cell="sa_convlstm"``): no wiring of its own, so masks, streaming, ``generate``,
``compile_step`` and checkpointing are the base class's. Each layer keeps its own
self-attention memory ``m`` (it is not passed between layers). The preset's layout is the
one the papers' parameter counts use (``docs/cells/sa_convlstm.md``): hyona-yu/SA-convlstm
cells with ``attention_channels = hidden_channels // 4``, the patch tensor straight into
layer 0, and a 1x1 decoder without bias.
"""

from __future__ import annotations

from typing import Any

from stpl.models.encoder_stack_decoder import EncoderStackDecoder
from stpl.registry import build_encoder_stack_decoder, register_preset

__all__ = ["build_sa_convlstm"]


def build_sa_convlstm(**options: Any) -> EncoderStackDecoder:
    """An :class:`~stpl.EncoderStackDecoder` of SA-ConvLSTM cells from preset options.

    Options are :class:`~stpl.EncoderStackDecoder`'s and :class:`~stpl.SAConvLSTMCell`'s
    (``attention_channels``, ``norm``, ...); ``image_size`` is accepted and unused (the
    cell's group norm works at any resolution).
    """
    options = {"cell": "sa_convlstm", **options}
    return build_encoder_stack_decoder(**options)


register_preset(
    "sa_convlstm",
    build_sa_convlstm,
    {
        "cell": "sa_convlstm",
        "in_channels": 1,
        "hidden_channels": 64,
        "num_layers": 4,
        "patch_size": 4,
        "kernel_size": 5,
        "decoder_bias": False,
    },
    small={"hidden_channels": 8, "num_layers": 2, "image_size": 16},
    description=(
        "SA-ConvLSTM (AAAI 2020): ConvLSTM + self-attention memory, hyona-yu/SA-convlstm "
        "cells (attention channels = hidden // 4), 1x1 decoder"
    ),
)
