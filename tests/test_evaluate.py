"""Evaluation: metrics of a model, the ablation over folds, the printed tables, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from milsil.cli import main as cli_main
from milsil.data import load_dataset
from milsil.data.synth import synthesize_dataset
from milsil.engine.config import TrainConfig
from milsil.engine.validation import evaluate_model, predict
from milsil.errors import MilsilError
from milsil.experiments.ablation import (
    ablation,
    format_localization_table,
    format_table1,
    summarize,
)
from milsil.experiments.localization import class_log_odds, localization, target_class
from milsil.models import create_model


@pytest.fixture(scope="module")
def synth_small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    manifest = synthesize_dataset(root, patients=4, images_per_patient=2, size=48, seed=1)
    records, classes = load_dataset(manifest)
    return manifest, records, classes


def test_evaluate_model_reports_sil_and_mil(synth_small):
    _, records, classes = synth_small
    torch.manual_seed(0)
    model = create_model("bagnet9", 2, width=8, class_names=classes).eval()
    m = evaluate_model(model, records, 16, "cpu", batch_size=3)
    assert m["bags"] == 8 and m["patches"] == 8 * 9
    for key in ("mil_accuracy", "sil_accuracy", "mil_auroc", "sil_auroc"):
        assert 0.0 <= m[key] <= 1.0
    assert m["loss"] > 0
    # predictions come back in record order and MIL = mean of SIL logits
    p = predict(model, records, 16, "cpu", batch_size=3)
    assert p["labels"].tolist() == [r.label for r in records]
    assert p["sil_probs"].shape == (72, 2) and (p["sil_bag"][:9] == 0).all()
    assert not model.training


def test_evaluate_model_admil_has_no_sil_metrics(synth_small):
    _, records, classes = synth_small
    model = create_model("admil", 2, width=8, class_names=classes)
    m = evaluate_model(model, records, 16, "cpu")
    assert math.isnan(m["sil_accuracy"]) and m["patches"] == 0
    assert 0.0 <= m["mil_accuracy"] <= 1.0


def test_class_log_odds_and_target():
    logits = torch.tensor([[1.0, 2.0], [3.0, -1.0]])[:, :, None]  # [C=2, 2, 1]
    np.testing.assert_allclose(class_log_odds(logits, 1)[:, 0], [2.0, -3.0])
    three = torch.tensor([0.0, 1.0, 2.0])[:, None, None]
    expected = 2.0 - math.log(math.exp(0.0) + math.exp(1.0))
    assert float(class_log_odds(three, 2)) == pytest.approx(expected)
    assert target_class(["benign", "malignant"]) == 1
    assert target_class(["malignant", "normal"]) == 0
    assert target_class(["a", "b", "c"]) == 2


def test_localization_on_untrained_model(synth_small):
    _, records, classes = synth_small
    torch.manual_seed(0)
    model = create_model("bagnet9", 2, width=8, class_names=classes)
    loc = localization(model, records, classes)
    assert set(loc) == {"logit", "cam", "gradcam"}
    n = sum(r.label == 1 for r in records)
    for vals in loc.values():
        assert 1 <= vals["images"] <= n
        assert 0.0 <= vals["pixel_auroc"] <= 1.0 and 0.0 <= vals["dice"] <= 1.0
    with pytest.raises(MilsilError, match="border"):
        localization(model, records, classes, border=-1)


def fake_results():
    """Fold results with known means and sample stds: 0.8/0.9 -> 85.00 +- 7.07 (n - 1)."""
    methods = {}
    for h, name, base in (
        ("sil", "BagNet", 0.8),
        ("mil", "MILBagNet", 0.7),
        ("milsil", "Proposed", 0.9),
    ):
        folds = [
            {"sil_accuracy": base, "mil_accuracy": base + 0.05, "sil_auroc": 0.9, "mil_auroc": 1.0},
            {
                "sil_accuracy": base + 0.1,
                "mil_accuracy": base + 0.05,
                "sil_auroc": float("nan"),
                "mil_auroc": 1.0,
            },
        ]
        methods[h] = {"name": name, "folds": folds}
    loc = {
        "milsil": {
            "logit": [
                {"pixel_auroc": 0.9, "pointing_game": 1.0, "dice": 0.4, "images": 3, "fold": 0},
                {"pixel_auroc": 0.8, "pointing_game": 0.0, "dice": 0.2, "images": 2, "fold": 1},
            ]
        }
    }
    return summarize({"folds": 2, "methods": methods, "localization": loc})


def test_format_table1_layout():
    text = format_table1(fake_results())
    lines = text.splitlines()
    assert "mean +- std over 2 folds" in lines[0]
    assert lines[1].split() == ["BagNet", "MILBagNet", "Proposed"]
    assert lines[2].split()[0] == "SIL" and lines[3].split()[0] == "MIL"
    assert "85.00 +- 7.07" in lines[2] and "95.00 +- 7.07" in lines[2]  # sample std
    assert "75.00 +- 0.00" in lines[3]
    auroc = format_table1(fake_results(), "auroc")
    # the nan fold is left out, not counted as 0: one value, no spread to print
    assert "0.90" in auroc and "0.90 +-" not in auroc
    with pytest.raises(MilsilError, match="metric"):
        format_table1(fake_results(), "f1")


def test_format_localization_table():
    text = format_localization_table(fake_results())
    assert "Proposed model, 5 held-out images" in text
    row = next(line for line in text.splitlines() if line.startswith("Logit heatmap"))
    # sample std over the 2 folds: {0.9, 0.8}, {1, 0}, {0.4, 0.2}
    assert "0.85 +- 0.07" in row and "0.50 +- 0.71" in row and "0.30 +- 0.14" in row


def test_ablation_runs_all_heads_and_resumes(synth_small, tmp_path):
    _, records, classes = synth_small
    cfg = TrainConfig(width=8, epochs=1, lr=1e-3, batch_size=2, patch_size=16, device="cpu")
    messages: list[str] = []
    res = ablation(records, classes, folds=2, config=cfg, out_dir=tmp_path, log=messages.append)
    assert set(res["methods"]) == {"sil", "mil", "milsil"}
    for entry in res["methods"].values():
        assert len(entry["folds"]) == 2 and entry["summary"]["mil_accuracy"]["n"] == 2
    assert set(res["localization_summary"]) == {"sil", "mil", "milsil"}
    assert set(res["localization_summary"]["milsil"]) == {"logit", "cam", "gradcam"}
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["methods"]["milsil"]["name"] == "Proposed"
    assert any("[fold 2/2] Proposed" in m for m in messages)
    assert (tmp_path / "fold1" / "mil" / "best.pt").is_file()
    assert "Proposed" in format_table1(res) and "Grad-CAM" in format_localization_table(res)
    # a second call finds every run finished and repeats the numbers without training
    again = ablation(
        records, classes, folds=2, config=cfg, out_dir=tmp_path, log=None, localize=False
    )
    for h in ("sil", "mil", "milsil"):
        a = [f["mil_accuracy"] for f in res["methods"][h]["folds"]]
        assert [f["mil_accuracy"] for f in again["methods"][h]["folds"]] == a


def test_ablation_rejects_bad_arguments(synth_small, tmp_path):
    _, records, classes = synth_small
    with pytest.raises(MilsilError, match="unknown head"):
        ablation(records, classes, heads=("attention",), out_dir=tmp_path)
    with pytest.raises(MilsilError, match="folds"):
        ablation(records, classes, folds=1, out_dir=tmp_path)
    with pytest.raises(MilsilError, match="at least 5 patients"):
        ablation(records, classes, folds=5, out_dir=tmp_path, log=None)


def test_cli_evaluate_checkpoint_and_ablation(synth_small, tmp_path, capsys):
    manifest = str(synth_small[0])
    out = tmp_path / "abl"
    flags = "--folds 2 --heads milsil --width 8 --epochs 1 --patch-size 16 --batch-size 4"
    argv = ["evaluate", manifest, "--out", str(out), *flags.split(), "--lr", "1e-3"]
    assert cli_main([*argv, "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Table 1" in text and "Proposed" in text and "Logit heatmap" in text
    assert (out / "ablation.json").is_file()
    ckpt = out / "fold0" / "milsil" / "best.pt"
    assert cli_main(["evaluate", manifest, "--checkpoint", str(ckpt), "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "MIL accuracy" in text and "Grad-CAM" in text
    assert json.loads((tmp_path / "evaluation.json").read_text())["metrics"]["bags"] == 8
    assert cli_main(["evaluate", manifest]) == 2
    assert "--out is required" in capsys.readouterr().err


class _Brightness(torch.nn.Module):
    """A 'backbone' whose feature is the mean normalised pixel value of a patch (+1 white,
    -1 black with mean = std = 0.5), so every prediction can be worked out by hand."""

    receptive_field = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


def test_sil_and_mil_accuracy_match_a_hand_computed_case(tmp_path):
    """Three 64x64 images, bags of four 32x32 patches (row-major), each patch all white or
    all black; patch logits (-f, f) with f = +1 white / -1 black; the bag logits are the
    mean of the patch logits (one shared linear layer), so a bag is malignant when most of
    its patches are white.

    A (malignant) W B B B: patches 1 0 0 0 -> 1/4 right; bag mean -0.5 -> benign, wrong
    B (malignant) W W W B: patches 1 1 1 0 -> 3/4 right; bag +0.5 -> malignant, right
    C (benign)    W B B B: patches 1 0 0 0 -> 3/4 right; bag -0.5 -> benign, right
    SIL accuracy (bag labels) 7/12, MIL accuracy 2/3. Against the patches' own labels from
    the masks (A: patch 0 malignant; B: patches 0 and 3; C: no mask, benign): A 4/4,
    B 1/4, C 3/4 -> 8/12.
    """
    from PIL import Image

    from milsil.data import BagRecord
    from milsil.models import MilSilNet, make_config

    def image(quadrants: str) -> np.ndarray:
        img = np.zeros((64, 64, 3), np.uint8)
        for q, c in enumerate(quadrants):
            y, x = divmod(q, 2)
            img[32 * y : 32 * y + 32, 32 * x : 32 * x + 32] = 255 if c == "W" else 0
        return img

    def mask(quadrants: list[int]) -> np.ndarray:
        m = np.zeros((64, 64), np.uint8)
        for q in quadrants:
            y, x = divmod(q, 2)
            m[32 * y + 10 : 32 * y + 12, 32 * x + 5 : 32 * x + 7] = 255  # a small nucleus
        return m

    records = []
    for name, quads, label, own in (
        ("A", "WBBB", 1, [0]),
        ("B", "WWWB", 1, [0, 3]),
        ("C", "WBBB", 0, None),
    ):
        Image.fromarray(image(quads)).save(tmp_path / f"{name}.png")
        mask_path = None
        if own is not None:
            Image.fromarray(mask(own)).save(tmp_path / f"{name}_mask.png")
            mask_path = str(tmp_path / f"{name}_mask.png")
        records.append(BagRecord(str(tmp_path / f"{name}.png"), label, name, mask_path))
    config = make_config(
        "bagnet9", 2, "milsil", 16, ["benign", "malignant"], (0.5,) * 3, (0.5,) * 3
    )
    model = MilSilNet(_Brightness(), 1, config)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model.fc.bias.zero_()
    metrics = evaluate_model(model, records, 32, "cpu", batch_size=2, own_labels=True)
    assert metrics["sil_accuracy"] == pytest.approx(7 / 12)
    assert metrics["mil_accuracy"] == pytest.approx(2 / 3)
    assert metrics["sil_accuracy_own"] == pytest.approx(8 / 12)
    assert (metrics["bags"], metrics["patches"]) == (3, 12)
    out = model(torch.ones(1, 4, 3, 32, 32) * torch.tensor([1.0, -1, -1, -1]).view(1, 4, 1, 1, 1))
    assert torch.allclose(out.mil_logits, out.sil_logits.mean(dim=1))  # MIL = mean of SIL
    assert out.mil_logits.tolist() == [[0.5, -0.5]]
