"""Patching (space-to-depth): round trips and the reference codes' exact channel orders.

The reference layouts are written out here with plain ``reshape``/``permute`` calls, as
``reference-implementations.md`` section 5a describes them, and by their channel index.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from stpl.patching import PATCH_ORDERS, patch_permutation, patchify, unpatchify

ORDERS = list(PATCH_ORDERS)


def predrnn_reference(frames: Tensor, p: int) -> Tensor:
    """thuml/predrnn-pytorch ``reshape_patch`` on channels-last frames, then channels-first.

    ``(B, T, H, W, C) -> (B, T, H/p, p, W/p, p, C)``, transpose axes 3 and 4, flatten the
    last three axes; the cell sees the result permuted to ``(B, T, p*p*C, H/p, W/p)``.
    """
    b, t, c, h, w = frames.shape
    x = frames.permute(0, 1, 3, 4, 2)  # channels-last
    x = x.reshape(b, t, h // p, p, w // p, p, c).permute(0, 1, 2, 4, 3, 5, 6)
    x = x.reshape(b, t, h // p, w // p, p * p * c)
    return x.permute(0, 1, 4, 2, 3)


def modernn_reference(frames: Tensor, p: int) -> Tensor:
    """czh-98/MoDeRNN ``reshape_patch``: ``(B, C, H/p, p, W/p, p)``, transpose(2,5), (4,5)."""
    b, t, c, h, w = frames.shape
    x = frames.reshape(b * t, c, h // p, p, w // p, p)
    x = x.transpose(2, 5).transpose(4, 5)
    return x.reshape(b, t, c * p * p, h // p, w // p)


def channel_index(order: str, c: int, ph: int, pw: int, channels: int, p: int) -> int:
    """Index of pixel ``(c, ph, pw)`` of a patch among its ``p*p*C`` channels."""
    if order == "predrnn":
        return (ph * p + pw) * channels + c
    if order == "modernn":
        return c * p * p + pw * p + ph
    return c * p * p + ph * p + pw  # pixel_shuffle


def test_orders_are_distinct():
    # With C > 1 and p > 1 the three orders differ, so the tests below can tell them apart.
    x = torch.randn(1, 1, 2, 4, 4)
    outs = [patchify(x, 2, order) for order in ORDERS]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.equal(outs[i], outs[j])


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("p", [2, 4])
def test_predrnn_order_equals_reference_reshape(c, p):
    x = torch.randn(2, 3, c, 4 * p, 2 * p)
    assert torch.equal(patchify(x, p, "predrnn"), predrnn_reference(x, p))


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("p", [2, 4])
def test_modernn_order_equals_reference_reshape(c, p):
    x = torch.randn(2, 3, c, 2 * p, 3 * p)
    assert torch.equal(patchify(x, p, "modernn"), modernn_reference(x, p))


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("p", [2, 3])
def test_pixel_shuffle_order_equals_pixel_unshuffle(c, p):
    x = torch.randn(2, 3, c, 2 * p, 3 * p)
    expected = F.pixel_unshuffle(x.flatten(0, 1), p).unflatten(0, (2, 3))
    assert torch.equal(patchify(x, p, "pixel_shuffle"), expected)
    assert torch.equal(unpatchify(expected, p, "pixel_shuffle"), x)
    assert torch.equal(
        unpatchify(expected, p, "pixel_shuffle").flatten(0, 1),
        F.pixel_shuffle(expected.flatten(0, 1), p),
    )


@pytest.mark.parametrize("order", ORDERS)
def test_channel_index_formula(order):
    c_count, p, hp, wp = 2, 3, 2, 2
    x = torch.randn(c_count, hp * p, wp * p)
    patches = patchify(x, p, order)
    assert patches.shape == (c_count * p * p, hp, wp)
    for c in range(c_count):
        for ph in range(p):
            for pw in range(p):
                k = channel_index(order, c, ph, pw, c_count, p)
                for i in range(hp):
                    for j in range(wp):
                        assert patches[k, i, j] == x[c, i * p + ph, j * p + pw]


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=3),
    c=st.integers(1, 3),
    p=st.integers(1, 4),
    hp=st.integers(1, 3),
    wp=st.integers(1, 3),
    order=st.sampled_from(ORDERS),
)
def test_round_trip(lead, c, p, hp, wp, order):
    x = torch.randn(*lead, c, hp * p, wp * p, dtype=torch.float64)
    patches = patchify(x, p, order)
    assert patches.shape == (*lead, c * p * p, hp, wp)
    assert torch.equal(unpatchify(patches, p, order), x)
    # and the other way round: patchify(unpatchify(y)) == y
    y = torch.randn(*lead, c * p * p, hp, wp, dtype=torch.float64)
    assert torch.equal(patchify(unpatchify(y, p, order), p, order), y)


@settings(max_examples=30, deadline=None)
@given(
    c=st.integers(1, 3),
    p=st.integers(1, 4),
    source=st.sampled_from(ORDERS),
    target=st.sampled_from(ORDERS),
)
def test_patch_permutation_maps_orders(c, p, source, target):
    x = torch.randn(2, c, 2 * p, p)
    perm = patch_permutation(c, p, source, target)
    assert sorted(perm) == list(range(c * p * p))
    assert torch.equal(patchify(x, p, target), patchify(x, p, source)[:, perm])


def test_patch_permutation_predrnn_to_modernn_explicit():
    # C=1, p=2: predrnn index ph*2+pw, modernn index pw*2+ph -> swap of channels 1 and 2.
    assert patch_permutation(1, 2, "predrnn", "modernn") == [0, 2, 1, 3]
    assert patch_permutation(1, 2, "predrnn", "pixel_shuffle") == [0, 1, 2, 3]


@pytest.mark.parametrize("shape", [(1, 6, 8), (2, 8, 6), (2, 3, 1, 7, 7)])
def test_not_divisible_raises(shape):
    x = torch.zeros(shape)
    with pytest.raises(ValueError, match=r"not divisible by patch_size=4|divisible.*patch_size"):
        patchify(x, 4)


def test_not_divisible_names_the_axis():
    with pytest.raises(ValueError, match=r"H=30 is not divisible by patch_size=4"):
        patchify(torch.zeros(1, 30, 32), 4)
    with pytest.raises(ValueError, match=r"W=30 is not divisible by patch_size=4"):
        patchify(torch.zeros(1, 32, 30), 4)


def test_unpatchify_bad_channels_raises():
    with pytest.raises(ValueError, match="patch_size"):
        unpatchify(torch.zeros(1, 6, 4, 4), 2)


def test_bad_rank_raises():
    with pytest.raises(ValueError, match=r"\(\.\.\., C, H, W\)"):
        patchify(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="x must be"):
        unpatchify(torch.zeros(4, 4), 2)


def test_unknown_order_raises():
    x = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match="patch_order"):
        patchify(x, 2, "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patch_order"):
        unpatchify(x, 2, "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patch_order"):
        patch_permutation(1, 2, "predrnn", "nope")  # type: ignore[arg-type]


@pytest.mark.parametrize("p", [0, -2, 2.0, True])
def test_bad_patch_size_raises(p):
    x = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match="patch_size"):
        patchify(x, p)
    with pytest.raises(ValueError, match="patch_size"):
        unpatchify(x, p)
