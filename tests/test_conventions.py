"""PyTorch conventions every stpl module keeps.

* ``device=`` / ``dtype=`` factory arguments, like ``torch.nn`` layers;
* building on the ``meta`` device, ``to_empty`` and ``reset_parameters()`` on every module
  gives a model initialised like a normally built one (same constants, same ranges);
* unknown keyword arguments fail at the public boundary with their name;
* a custom cell that follows :class:`stpl.RecurrentCell` stacks like a built-in one, and
  the factory can build each layer differently;
* every module of the package declares ``__all__`` and every name in it exists.
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

import stpl
from stpl.registry import preset

NAMES = stpl.list_models()


def small_options(name: str) -> dict:
    return dict(preset(name).small)


# ------------------------------------------------------------------ factory arguments
@pytest.mark.parametrize("name", NAMES)
def test_presets_take_device_and_dtype(name):
    model = stpl.get_model(name, **small_options(name), dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    meta = stpl.get_model(name, **small_options(name), device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}


@pytest.mark.parametrize(
    "cell",
    [
        lambda **f: stpl.ConvLSTMCell(3, 4, 3, peephole=True, norm="layer", **f),
        lambda **f: stpl.STLSTMCell(3, 4, 3, norm="layer", action_channels=2, **f),
        lambda **f: stpl.MoDeRNNCell(3, 4, 3, spatial_size=(8, 8), **f),
        lambda **f: stpl.DetailContextBlock(3, 4, **f),
        lambda **f: stpl.LayerNorm2d(4, spatial_size=(8, 8), **f),
        lambda **f: stpl.GateConv(3, 4, 3, norm="layer", **f),
    ],
)
def test_cells_take_device_and_dtype(cell):
    module = cell(dtype=torch.float64)
    assert {p.dtype for p in module.parameters()} == {torch.float64}
    assert {p.device.type for p in cell(device="meta").parameters()} == {"meta"}
    with pytest.raises(ValueError, match="dtype"):
        cell(dtype=torch.int64)


# ------------------------------------------------------------------ meta + reset_parameters
def _reset_every_module(model: nn.Module) -> None:
    # children first: a cell that initialises its convolutions its own way (TrajGRU's
    # official init, the GHU's small uniform) resets after them and has the last word
    for module in reversed(list(model.modules())):
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


@pytest.mark.parametrize("name", NAMES)
def test_meta_build_then_reset_parameters_matches_a_normal_build(name):
    options = small_options(name)
    torch.manual_seed(0)
    normal = stpl.get_model(name, **options)
    with torch.device("meta"):
        meta = stpl.get_model(name, **options)
    meta.to_empty(device="cpu")
    with torch.no_grad():  # fill with garbage first: reset must overwrite every element
        for p in meta.parameters():
            p.fill_(1234.5)
    _reset_every_module(meta)
    want = dict(normal.named_parameters())
    for key, p in meta.named_parameters():
        w = want[key]
        assert p.shape == w.shape, key
        first = w.flatten()[0].item()
        if torch.all(w == first) and (w.numel() > 1 or first in (0.0, 1.0)):  # ones, zeros
            assert_close(p, w, msg=key)
        elif w.numel() >= 256:  # random initialisations: the same centre and spread
            ratio = (p.std() / w.std()).item()
            assert 0.8 < ratio < 1.25, (key, ratio)
            assert abs((p.mean() - w.mean()).item()) < 0.25 * w.std().item(), key
        else:  # a few values: at least not left as they were (the garbage fill)
            assert not torch.any(p == 1234.5), key
    # and the model built on meta runs like any other
    shape = preset(name).frame_shape
    out = meta(torch.rand(1, 3, *shape), context=2)
    predictions = out.predictions
    if isinstance(predictions, (list, tuple)):
        predictions = predictions[0]
    assert torch.isfinite(predictions).all()


def test_every_module_that_owns_parameters_can_reset_them():
    for name in NAMES:
        model = stpl.get_model(name, **small_options(name))
        for mod_name, module in model.named_modules():
            own = list(module.parameters(recurse=False))
            if own:
                assert callable(getattr(module, "reset_parameters", None)), (name, mod_name)


# ------------------------------------------------------------------ keyword arguments
def test_unknown_keyword_arguments_are_named():
    with pytest.raises(TypeError, match=r"'hiden_channels' \(did you mean 'hidden_channels'\?\)"):
        stpl.get_model("predrnn", hiden_channels=8)
    with pytest.raises(TypeError, match=r"'norms'.*accepted"):
        stpl.EncoderStackDecoder("convlstm", norms="layer")
    # device and dtype are the model's own arguments, not cell options
    model = stpl.EncoderStackDecoder("stlstm", hidden_channels=4, num_layers=1, device="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_hidden_channels_list_and_num_layers_must_agree():
    with pytest.raises(ValueError, match=r"num_layers=2 does not match the 3 entries"):
        stpl.EncoderStackDecoder("convlstm", hidden_channels=[4, 4, 4], num_layers=2)
    assert stpl.EncoderStackDecoder("convlstm", hidden_channels=[4, 4, 4]).num_layers == 3
    assert stpl.get_model("convlstm", hidden_channels=[4, 6]).num_layers == 2
    with pytest.raises(ValueError, match="num_layers=3 does not match"):
        stpl.get_model("convlstm", hidden_channels=[4, 6], num_layers=3)


def test_integer_arguments_accept_numpy_integers():
    model = stpl.EncoderStackDecoder(
        "convlstm", hidden_channels=np.int64(4), num_layers=np.int32(2), patch_size=np.int8(2)
    )
    assert model.hidden_channels == (4, 4) and model.patch_size == 2
    assert isinstance(model.patch_size, int)
    cell = stpl.ConvLSTMCell(np.int64(2), np.int64(4), np.int64(3))
    assert cell.kernel_size == 3 and isinstance(cell.kernel_size, int)
    with pytest.raises(ValueError, match="hidden_channels must be a positive int; got True"):
        stpl.ConvLSTMCell(2, True, 3)


# ------------------------------------------------------------------ custom cells
class TinyGRU(nn.Module):
    """A convolutional GRU-like cell written here, following stpl.RecurrentCell."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 2 * hidden_channels, kernel_size,
                               padding=kernel_size // 2)

    def initial_state(self, x: Tensor) -> tuple[Tensor]:
        return (x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[2:]),)

    def forward(self, x: Tensor, state: tuple[Tensor] | None = None) -> tuple[Tensor, tuple]:
        (h,) = self.initial_state(x) if state is None else state
        z, n = torch.chunk(self.gates(torch.cat([x, h], 1)), 2, dim=1)
        h = torch.sigmoid(z) * h + (1 - torch.sigmoid(z)) * torch.tanh(n)
        return h, (h,)


def test_a_custom_cell_follows_the_protocol_and_stacks():
    assert isinstance(TinyGRU(1, 4), stpl.RecurrentCell)
    assert isinstance(stpl.STLSTMCell(1, 4), stpl.RecurrentCell)
    assert not isinstance(nn.Linear(2, 2), stpl.RecurrentCell)
    built: list[tuple[int, int, int]] = []

    def factory(c_in: int, c_hidden: int, layer: int) -> nn.Module:
        built.append((c_in, c_hidden, layer))
        return TinyGRU(c_in, c_hidden) if layer == 0 else stpl.ConvLSTMCell(c_in, c_hidden, 3)

    torch.manual_seed(0)
    model = stpl.EncoderStackDecoder(factory, hidden_channels=[4, 6], patch_size=2).eval()
    assert built == [(4, 4, 0), (4, 6, 1)]
    assert isinstance(model.cells[0], TinyGRU) and isinstance(model.cells[1], stpl.ConvLSTMCell)
    frames = torch.rand(2, 5, 1, 8, 8)
    out = model(frames)
    # by hand: patch, run the two cells, decode, unpatch
    x = stpl.patchify(frames, 2)
    s0 = s1 = None
    preds = []
    for t in range(4):
        h0, s0 = model.cells[0](x[:, t], s0)
        h1, s1 = model.cells[1](h0, s1)
        preds.append(model.decoder(h1))
    assert_close(out.predictions, stpl.unpatchify(torch.stack(preds, 1), 2))
    # the streaming contract holds for a custom stack too
    state = model.observe(frames[:, :2])
    state = model.observe(frames[:, 2:], state)
    assert_close(model.forecast(state, 3), model.generate(frames, 3).predictions)
    # a two-argument factory still works
    two = stpl.EncoderStackDecoder(lambda i, h: TinyGRU(i, h), hidden_channels=4, num_layers=2)
    assert all(isinstance(c, TinyGRU) for c in two.cells)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        stpl.EncoderStackDecoder(lambda i, h: "not a cell", hidden_channels=4, num_layers=1)


# ------------------------------------------------------------------ __all__
def _modules() -> list[str]:
    names = ["stpl"]
    for info in pkgutil.walk_packages(stpl.__path__, "stpl."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _modules())
def test_every_module_declares_all(module_name):
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ lists missing {name!r}"


def test_declared_torch_minimum_matches_the_import_check():
    import re
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'"torch>=(\d+)\.(\d+)"', pyproject)
    assert declared is not None
    assert (int(declared[1]), int(declared[2])) == stpl.MIN_TORCH
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"torch >= {stpl.MIN_TORCH[0]}.{stpl.MIN_TORCH[1]}" in readme
