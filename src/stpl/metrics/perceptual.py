"""LPIPS (learned perceptual image patch similarity) per frame, with the papers' conventions.

PredRNN-V2 (``thuml/predrnn-pytorch``, ``core/trainer.py::test``) and MSPred
(``lib/metrics.py``) report LPIPS computed by the ``lpips`` package (Zhang et al., CVPR
2018) with the AlexNet backbone (``lpips.LPIPS(net="alex")``), per predicted frame, averaged
over sequences and frames; lower is better. This module runs the same network batched over
all ``B*T`` frames at once, on the frames' device.

The network comes from the optional extra ``pip install "torch-stpl[lpips]"`` (the ``lpips``
package and torchvision). Its linear calibration layers ship inside the ``lpips`` package;
the backbone's ImageNet weights are torchvision's, which torchvision downloads on first use
into ``torch.hub.get_dir()/checkpoints`` (e.g. ``alexnet-owt-7be5be79.pth``, 233 MB). Where
neither the network nor a cached copy is available, :func:`lpips` raises a ``RuntimeError``
that names the file and the folder to put it in.

Input scaling. The ``lpips`` package documents inputs in [-1, 1] (``normalize=True`` maps
[0, 1] frames there). PredRNN-V2 and MSPred both feed their [0, 1] frames **unscaled**
(no ``normalize=True``), and their tables were computed that way; this is the default here
(``normalize=False``). OpenSTL scales to [-1, 1] (``lpips.im2tensor(x * 255)``): pass
``normalize=True`` for its numbers. The two conventions give different values for the same
frames: never mix them in one table.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from stpl._validation import check_bool, check_positive_int
from stpl.metrics.frame import _check_pair, _reduce

__all__ = ["lpips"]

_NETS = ("alex", "vgg", "squeeze")
# torchvision weights behind each lpips backbone (lpips.pretrained_networks)
_TV_WEIGHTS = {
    "alex": "AlexNet_Weights",
    "vgg": "VGG16_Weights",
    "squeeze": "SqueezeNet1_1_Weights",
}


def _import_lpips() -> Any:
    try:
        return importlib.import_module("lpips")
    except ImportError as e:
        raise ImportError(
            "stpl.metrics.lpips needs the lpips package (and torchvision): "
            'pip install "torch-stpl[lpips]"'
        ) from e


def _weights_file(net: str) -> str:
    """The torchvision checkpoint file name of ``net``'s backbone, or a description."""
    try:
        models = importlib.import_module("torchvision.models")
        url = str(getattr(models, _TV_WEIGHTS[net]).IMAGENET1K_V1.url)
        return url.rsplit("/", 1)[-1]
    except (ImportError, AttributeError):
        return f"torchvision's ImageNet weights of {_TV_WEIGHTS[net]}"


@functools.cache
def _network(net: str, device: torch.device) -> nn.Module:
    """``lpips.LPIPS(net=net)`` with pretrained backbone, frozen, eval mode, on ``device``."""
    package = _import_lpips()
    try:
        with warnings.catch_warnings():
            # torchvision deprecation warnings about lpips' `pretrained=` call
            warnings.simplefilter("ignore", UserWarning)
            model: nn.Module = package.LPIPS(net=net, pretrained=True, verbose=False)
    except (OSError, RuntimeError) as e:
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise RuntimeError(
            f"stpl.metrics.lpips(net={net!r}) could not load the backbone's weights "
            f"{_weights_file(net)!r}, which torchvision downloads on first use into {hub}: "
            f"{type(e).__name__}: {e}. Without network access, copy that file there from a "
            f"machine where `python -c \"import lpips; lpips.LPIPS(net='{net}')\"` has run "
            "(or set TORCH_HOME to a folder holding hub/checkpoints/<file>)."
        ) from e
    model.eval().requires_grad_(False)
    return model.to(device)


def lpips(
    pred: Tensor,
    target: Tensor,
    *,
    per_frame: bool = False,
    per_sample: bool = False,
    net: str | nn.Module = "alex",
    normalize: bool = False,
    clip: bool = True,
    chunk_size: int = 256,
) -> Tensor:
    """LPIPS distance per frame, averaged as PredRNN-V2 and MSPred report it (lower is better).

    Per (sequence b, frame t): ``LPIPS(target[b, t], clip(pred[b, t]))`` from the ``lpips``
    package, grey frames repeated to 3 channels (PredRNN-V2's test loop does this), frames
    fed in [0, 1] as the papers' code does (``normalize=False``) or mapped to [-1, 1] as the
    package documents (``normalize=True``, OpenSTL). Then the mean over sequences and frames
    (see ``per_frame``/``per_sample``). The frames go through the network ``chunk_size`` at a
    time, in float32 with autocast off; the result is differentiable with respect to
    ``pred`` when ``pred`` requires grad (and grad mode is on); it never builds a graph
    otherwise, and the cached networks' own weights are frozen.

    Needs ``pip install "torch-stpl[lpips]"`` (see the module docstring for the weights).

    Args:
        pred: ``(B, T, C, H, W)`` predicted frames on the [0, 1] scale, ``C`` 1 or 3;
            ``H, W`` large enough for the backbone (>= 31 for AlexNet).
        target: ``(B, T, C, H, W)`` true frames on the [0, 1] scale.
        per_frame: return the curve ``(T,)`` (mean over sequences) instead of a scalar.
        per_sample: return ``(B,)`` (mean over frames); with ``per_frame`` the ``(B, T)``
            table.
        net: ``"alex"`` (default; PredRNN-V2, MSPred, OpenSTL), ``"vgg"`` or ``"squeeze"``
            (built once per device with the pretrained backbone and cached), or an
            ``lpips.LPIPS`` module (or any module called as ``net(x0, x1)`` on
            ``(N, 3, H, W)`` frames returning ``(N, 1, 1, 1)``) on the frames' device.
        normalize: feed ``2x - 1`` (the package's [-1, 1] convention, OpenSTL) instead of
            the [0, 1] frames (PredRNN-V2, MSPred).
        clip: clip ``pred`` to [0, 1] first (PredRNN-V2; MSPred's sigmoid outputs are
            already in range).
        chunk_size: frames per network call (bounds the memory).

    Returns:
        ``()``, ``(T,)``, ``(B,)`` or ``(B, T)``, float32.

    Raises:
        ImportError: the ``lpips`` package is not installed (the message says how).
        RuntimeError: the backbone's pretrained weights cannot be obtained (the message
            names the file and where torchvision looks for it).
        ValueError: wrong rank, mismatched shapes or devices, non-floating dtype, frames
            not on the [0, 1] scale, ``C`` other than 1 or 3, frames too small for the
            backbone, unknown ``net``.
    """
    pred, target = _check_pair(pred, target)
    check_bool("per_frame", per_frame)
    check_bool("per_sample", per_sample)
    check_bool("normalize", normalize)
    check_bool("clip", clip)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    b, t, c, h, w = pred.shape
    if c not in (1, 3):
        raise ValueError(
            f"LPIPS takes grey (C=1, repeated to 3 channels) or RGB (C=3) frames; got C={c}"
        )
    if isinstance(net, str):
        if net not in _NETS:
            raise ValueError(f"net must be one of {_NETS} or an lpips.LPIPS module; got {net!r}")
        model = _network(net, pred.device)
    elif isinstance(net, nn.Module):
        model = net
    else:
        raise TypeError(f"net must be a str or an nn.Module; got {type(net).__name__}")

    x = pred.float()
    if clip:
        x = x.clamp(0.0, 1.0)
    y = target.float()
    x = x.reshape(b * t, c, h, w).expand(-1, 3, -1, -1)
    y = y.reshape(b * t, c, h, w).expand(-1, 3, -1, -1)
    if normalize:
        x, y = 2.0 * x - 1.0, 2.0 * y - 1.0
    values = []
    # a graph only when the prediction asks for one (not for a user's unfrozen network)
    grad = torch.is_grad_enabled() and pred.requires_grad
    with torch.autocast(pred.device.type, enabled=False), torch.set_grad_enabled(grad):
        for start in range(0, b * t, chunk_size):
            stop = start + chunk_size
            try:
                d = model(y[start:stop], x[start:stop])  # the reference's (truth, prediction)
            except RuntimeError as e:
                if "too small" not in str(e):
                    raise
                raise ValueError(
                    f"frames of {h}x{w} are too small for the LPIPS backbone ({e})"
                ) from e
            values.append(d.reshape(-1))
    table = torch.cat(values).reshape(b, t)
    return _reduce(table, per_frame, per_sample)
