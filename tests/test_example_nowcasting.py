"""The nowcasting example: trains a few steps, writes its files, prints the HKO-7 table, and
fails cleanly on bad input; it also reads an HKO-7-style folder."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_nowcasting.py"
TINY = [
    "--hidden", "3,4,4", "--links", "2,2,2", "--image-size", "60", "--context", "3",
    "--horizon", "4", "--num-train", "4", "--num-eval", "2", "--batch-size", "2", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_nowcasting", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trains_and_writes_every_file(example: ModuleType, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert example.main([*TINY, "--steps", "2", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"metrics.json", "checkpoint.pt", "echoes.png"}
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["thresholds_mm_per_h"] == [0.5, 2.0, 5.0, 10.0, 30.0]
    assert np.array(summary["model"]["csi"]).shape == (4, 5)  # per lead time and threshold
    assert np.array(summary["persistence"]["hss"]).shape == (4, 5)
    assert [h["step"] for h in summary["history"]] == [1, 2]
    assert np.isfinite(summary["model"]["balanced_mse"])
    from PIL import Image

    with Image.open(out / "echoes.png") as im:
        assert im.width > im.height > 50
    # without --quiet: progress and the table per lead time
    args = [a for a in TINY if a != "--quiet"]
    assert example.main([*args, "--steps", "1", "--out", str(tmp_path / "loud")]) == 0
    text = capsys.readouterr().out
    assert "frames/s" in text and "| mean |" in text
    assert len(re.findall(r"^\| \d \|", text, flags=re.M)) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image-size", "64"], "--image-size must be a multiple of 30"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--hidden", "4,4"], "--hidden must be 3 comma-separated ints"),
        (["--hko-root", "/no/such/folder"], "no such folder"),
    ],
)
def test_bad_input_one_message_nothing_written(example, tmp_path, capsys, args, message) -> None:
    out = tmp_path / "run"
    assert example.main([*TINY, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def write_hko_tree(root: Path, masks: Path, frames: int, start: dt.datetime) -> None:
    """Frames every 6 minutes as HKO-7 names them (480 x 480 in the real data; 60 here)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(frames):
        t = start + dt.timedelta(minutes=6 * k)
        rel = Path(f"{t:%Y}", f"{t:%m}", f"{t:%d}", f"RAD{t:%y%m%d%H%M}00.png")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (60, 60), dtype=np.uint8)).save(root / rel)
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        (masks / rel.with_suffix(".mask")).write_bytes(
            zlib.compress(np.ones((60, 60), bool).tobytes())
        )


def test_reads_an_hko7_folder(example, tmp_path) -> None:
    from stpl.data import HKO7Frames

    root, masks = tmp_path / "radarPNG", tmp_path / "radarPNG_mask"
    write_hko_tree(root, masks, 17, dt.datetime(2015, 6, 1, 23, 30))  # across midnight
    ds = HKO7Frames(root, 7, stride=5, mask_root=masks)
    assert len(ds) == 3
    clip = ds[0]
    assert clip.frames.shape == (7, 1, 60, 60) and clip.mask.dtype.is_floating_point is False
    assert clip.start == "2015-06-01T23:30:00" and bool(clip.mask.all())
    exclude = np.zeros((60, 60), bool)
    exclude[:10] = True
    noisy = HKO7Frames(root, 7, exclude_mask=exclude)[0]
    value = noisy.frames * 255
    expect = ~exclude & ~((value > 0) & (value < 71)).numpy()[:, 0]
    assert np.array_equal(noisy.mask[:, 0].numpy(), expect)
    out = tmp_path / "run"
    args = [
        "--hko-root",
        str(root),
        "--hko-mask-root",
        str(masks),
        "--steps",
        "1",
        "--out",
        str(out),
    ]
    assert example.main([*TINY, *args]) == 0
    assert (out / "echoes.png").is_file()
