"""Every public name of the 0.1 layout still imports from its old path (the layout moved)."""

from __future__ import annotations

import importlib

import pytest

# module -> its public names at the first release (git 18b2905), before the layout move
PUBLIC_0_1: dict[str, list[str]] = {
    "stpl": [
        "CELLS",
        "ConvLSTMCell",
        "DCBOutput",
        "DetailContextBlock",
        "EncoderStackDecoder",
        "GateConv",
        "LSTMState",
        "LayerNorm2d",
        "MoDeRNNCell",
        "MoDeRNNOutput",
        "Norm",
        "PRESETS",
        "PatchOrder",
        "PredictorOutput",
        "STLSTMCell",
        "STLSTMOutput",
        "STLSTMState",
        "__version__",
        "data",
        "get_model",
        "interop",
        "list_models",
        "metrics",
        "patchify",
        "training",
        "unpatchify",
    ],
    "stpl.benchmark": [
        "BenchConfig",
        "CELL_NAMES",
        "build_parser",
        "config_from_args",
        "format_result",
        "run_benchmark",
    ],
    "stpl.cells": [
        "ConvLSTMCell",
        "DCBOutput",
        "DetailContextBlock",
        "GateConv",
        "LSTMState",
        "LayerNorm2d",
        "MoDeRNNCell",
        "MoDeRNNOutput",
        "Norm",
        "STLSTMCell",
        "STLSTMOutput",
        "STLSTMState",
    ],
    "stpl.cells.convlstm": ["ConvLSTMCell"],
    "stpl.cells.modernn": ["DCBOutput", "DetailContextBlock", "MoDeRNNCell", "MoDeRNNOutput"],
    "stpl.cells.stlstm": ["STLSTMCell", "STLSTMOutput"],
    "stpl.data": [
        "FrameFolder",
        "MovingDigits",
        "MovingMNISTFile",
        "PredRNNNpz",
        "SequenceInfo",
        "VideoWindows",
        "load_idx_digits",
        "read_idx",
        "render_digit",
    ],
    "stpl.interop": [
        "CELL_SOURCES",
        "SOURCES",
        "convert_cell_state_dict",
        "convert_state_dict",
        "load_reference",
        "load_reference_cell",
    ],
    "stpl.metrics": ["Reduction", "mae", "mse", "psnr", "quantize_uint8", "ssim"],
    "stpl.patching": [
        "check_divisible",
        "check_patch_order",
        "check_patch_size",
        "patch_permutation",
        "patchify",
        "unpatchify",
    ],
    "stpl.predictor": ["EncoderStackDecoder", "PredictorOutput"],
    "stpl.registry": ["get_model", "list_models"],
    "stpl.training": [
        "Adapter",
        "LinearScheduledSampling",
        "ReverseScheduledSampling",
        "SamplingMask",
        "SamplingSchedule",
        "ScheduledSampling",
        "decoupling_loss",
        "decoupling_term",
        "inference_mask",
        "linear_sampling_eta",
        "modernn_loss",
        "mse_l1_loss",
        "predrnn_loss",
        "reverse_scheduled_sampling_mask",
        "reverse_scheduled_sampling_probs",
        "scheduled_sampling_eta",
        "scheduled_sampling_mask",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC_0_1))
def test_old_public_import_paths_still_work(module):
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC_0_1[module] if not hasattr(mod, name)]
    assert missing == []


def test_moved_names_are_the_same_objects_as_the_new_ones():
    import stpl
    from stpl import predictor

    assert predictor.EncoderStackDecoder is stpl.EncoderStackDecoder
    assert importlib.import_module("stpl.metrics").psnr is stpl.metrics.psnr
