"""``milsil heatmap`` end to end through the installed command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from milsil.data.synth import synth_image
from milsil.inference.heatmap import logit_heatmap
from milsil.models import create_model, save_checkpoint


def milsil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "milsil.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("heatmap_cli")
    torch.manual_seed(0)
    model = create_model("bagnet9", 2, width=8, class_names=["benign", "malignant"]).eval()
    save_checkpoint(model, root / "model.pt")
    rgb, _ = synth_image(np.random.default_rng(0), 48, malignant=True)
    Image.fromarray(rgb).save(root / "tissue.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def test_writes_logits_overlay_and_metadata(workdir):
    out = workdir / "out"
    result = milsil(
        "heatmap",
        str(workdir / "tissue.png"),
        "--model",
        str(workdir / "model.pt"),
        "--out",
        str(out),
        "--stride",
        "2",
        "--compare",
    )
    assert result.returncode == 0, result.stderr
    logits = np.load(out / "tissue.logits.npy")
    assert logits.shape == (2, 24, 24) and logits.dtype == np.float32
    model = torch.load(workdir / "model.pt", weights_only=True)  # noqa: F841 - loads safely
    from milsil.models import load_checkpoint

    expected = logit_heatmap(
        load_checkpoint(workdir / "model.pt"),
        np.asarray(Image.open(workdir / "tissue.png")),
        stride=2,
    )
    assert np.abs(logits - expected.numpy()).max() < 1e-5
    overlay = np.asarray(Image.open(out / "tissue.heatmap.png"))
    assert overlay.shape == (48, 48, 3)
    compare = np.asarray(Image.open(out / "tissue.compare.png"))
    side = 48 * 8  # enlarged by 8 to at least 384 px
    assert compare.shape[:2] == (2 * side + 4, 4 * side + 3 * 4)
    meta = json.loads((out / "heatmap_run.json").read_text())
    assert meta["class"] == "malignant" and meta["stride"] == 2 and not meta["failures"]
    # Rerun: finished work is skipped.
    again = milsil(
        "heatmap",
        str(workdir / "tissue.png"),
        "--model",
        str(workdir / "model.pt"),
        "--out",
        str(out),
    )
    assert again.returncode == 0 and "skipped" in again.stdout


def test_one_bad_image_does_not_stop_the_batch(workdir):
    out = workdir / "batch"
    result = milsil(
        "heatmap",
        str(workdir / "broken.png"),
        str(workdir / "tissue.png"),
        "--model",
        str(workdir / "model.pt"),
        "--out",
        str(out),
        "--stride",
        "8",
    )
    assert result.returncode == 1
    assert (out / "tissue.heatmap.png").exists()
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    meta = json.loads((out / "heatmap_run.json").read_text())
    assert len(meta["failures"]) == 1 and len(meta["results"]) == 1


def test_bad_checkpoint_and_class_give_one_line(workdir):
    (workdir / "foreign.pt").write_bytes(b"not a checkpoint")
    result = milsil("heatmap", str(workdir / "tissue.png"), "--model", str(workdir / "foreign.pt"))
    assert result.returncode == 2
    assert (
        result.stderr.strip().count("\n") == 0
        and "not a readable milsil checkpoint" in result.stderr
    )
    result = milsil(
        "heatmap",
        str(workdir / "tissue.png"),
        "--model",
        str(workdir / "model.pt"),
        "--class",
        "tumour",
    )
    assert (
        result.returncode == 2
        and "unknown class 'tumour'; this model's classes: benign, malignant" in result.stderr
    )
