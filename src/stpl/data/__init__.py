"""Datasets for video prediction, each yielding ``(T, C, H, W)`` frames.

* :class:`MovingDigits`: seeded Moving-MNIST-style sequences with procedural digit glyphs
  (no download), or with real MNIST digits from :func:`load_idx_digits`.
* :class:`MovingMNISTFile`: the standard ``mnist_test_seq.npy`` test set.
* :class:`PredRNNNpz`: PredRNN's ``.npz`` clip files.
* :class:`VideoWindows`: sliding windows over your own tensors.
* :class:`FrameFolder`: sliding windows over folders of image frames (needs Pillow).

See ``docs/data.md``.
"""

from stpl.data.glyphs import render_digit
from stpl.data.moving_digits import MovingDigits, SequenceInfo
from stpl.data.readers import MovingMNISTFile, PredRNNNpz, load_idx_digits, read_idx
from stpl.data.video import FrameFolder, VideoWindows

__all__ = [
    "FrameFolder",
    "MovingDigits",
    "MovingMNISTFile",
    "PredRNNNpz",
    "SequenceInfo",
    "VideoWindows",
    "load_idx_digits",
    "read_idx",
    "render_digit",
]
