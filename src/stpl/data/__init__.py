"""Datasets for video prediction, each yielding ``(T, C, H, W)`` frames.

* :class:`MovingDigits`: seeded Moving-MNIST-style sequences with procedural digit glyphs
  (no download), or with real MNIST digits from :func:`load_idx_digits`.
* :class:`MovingDigitsHeatmaps`: the same sequences with MSPred's heatmap targets of the
  digit centres (:func:`moving_digits_heatmaps`, :func:`gaussian_heatmaps`).
* :class:`MovingMNISTFile`: the standard ``mnist_test_seq.npy`` test set.
* :class:`PredRNNNpz`: PredRNN's ``.npz`` clip files.
* :class:`VideoWindows`: sliding windows over your own tensors.
* :class:`FrameFolder`: sliding windows over folders of image frames (needs Pillow).
* :class:`RadarEchoes`: seeded synthetic radar-echo sequences (HKO-7 pixel units, no
  download); :class:`HKO7Frames`: the HKO-7 benchmark's radar PNG folders; radar unit
  conversions (``rainfall_to_pixel``, ``pixel_to_rainfall``, dBZ) in :mod:`stpl.data.radar_units`.

See ``docs/data.md``.
"""

from stpl.data.glyphs import render_digit
from stpl.data.heatmaps import (
    MSPRED_SIGMAS,
    HeatmapSample,
    MovingDigitsHeatmaps,
    digit_centers,
    gaussian_heatmaps,
    moving_digits_heatmaps,
)
from stpl.data.moving_digits import MovingDigits, SequenceInfo
from stpl.data.radar import HKO7Frames, RadarClip, RadarEchoes, RadarSequenceInfo
from stpl.data.radar_units import pixel_to_rainfall, rainfall_to_pixel
from stpl.data.readers import MovingMNISTFile, PredRNNNpz, load_idx_digits, read_idx
from stpl.data.video import FrameFolder, VideoWindows

__all__ = [
    "MSPRED_SIGMAS",
    "FrameFolder",
    "HKO7Frames",
    "HeatmapSample",
    "MovingDigits",
    "MovingDigitsHeatmaps",
    "MovingMNISTFile",
    "PredRNNNpz",
    "RadarClip",
    "RadarEchoes",
    "RadarSequenceInfo",
    "SequenceInfo",
    "VideoWindows",
    "digit_centers",
    "gaussian_heatmaps",
    "load_idx_digits",
    "moving_digits_heatmaps",
    "pixel_to_rainfall",
    "rainfall_to_pixel",
    "read_idx",
    "render_digit",
]
