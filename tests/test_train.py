"""Training: config validation, loss per head, checkpoints, resume determinism, stopping,
best-checkpoint selection, the CLI, and one end-to-end acceptance run on synthetic data."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from milsil.cli import main as cli_main
from milsil.data import BagRecord
from milsil.engine.config import TrainConfig, config_differences
from milsil.engine.epoch import is_better
from milsil.engine.loop import TrainProgress, train_model
from milsil.engine.losses import bag_loss
from milsil.errors import MilsilError
from milsil.models import BagOutput, load_checkpoint, read_checkpoint

CLASSES = ["benign", "malignant"]


def make_images(root: Path, patients: int = 4, per_patient: int = 3, size: int = 32, seed: int = 0):
    """Tiny bags: noisy pink images; malignant ones hold a dark blob in one patch."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    records, rows = [], ["image,label,patient"]
    for p in range(patients):
        for i in range(per_patient):
            label = (p + i) % 2
            img = np.clip(rng.normal([220, 170, 200], 12, (size, size, 3)), 0, 255)
            if label:
                y, x = rng.integers(2, size - 8, 2)
                img[y : y + 6, x : x + 6] = [60, 20, 90]
            name = f"p{p}_{i}.png"
            Image.fromarray(img.astype(np.uint8)).save(root / name)
            records.append(BagRecord(str(root / name), label, f"p{p}"))
            rows.append(f"{name},{CLASSES[label]},p{p}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return records


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    records = make_images(root)
    return root, records


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        width=8, epochs=2, lr=1e-3, lr_decay=0.9, batch_size=2, patch_size=16, seed=3, device="cpu"
    )
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------ configuration


def test_config_defaults_come_from_the_recipe():
    """'default' learns from scratch on a CPU; ImageNet weights or 'paper' take the paper's
    optimiser; every choice is stored, so a stored config rebuilds the same run."""
    cfg = TrainConfig()
    assert (cfg.head, cfg.arch, cfg.recipe, cfg.pretrained) == (
        "milsil",
        "bagnet9",
        "default",
        "none",
    )
    assert (cfg.width, cfg.lr, cfg.lr_decay, cfg.stem_bn_momentum) == (16, 2e-3, 0.8, 0.1)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    warm = TrainConfig(pretrained="imagenet")
    assert (warm.width, warm.lr, warm.lr_decay, warm.stem_bn_momentum) == (64, 1e-4, 0.9, 0.001)
    paper = TrainConfig(recipe="paper")
    assert (paper.pretrained, paper.width, paper.lr, paper.weight_decay) == (
        "imagenet",
        64,
        1e-4,
        0,
    )
    admil = TrainConfig(recipe="paper", arch="admil")
    assert (admil.pretrained, admil.weight_decay) == ("none", 5e-4)  # Ilse et al.
    given = TrainConfig(lr=5e-3, width=8)
    assert (given.lr, given.width, given.lr_decay) == (5e-3, 8, 0.8)
    lines = given.explain()
    assert lines[0].startswith("recipe default") and any(
        "lr 0.005: set explicitly" in x for x in lines
    )
    assert any("lr decay x0.8/epoch: with lr 2e-3" in x for x in lines)
    # a run stored before recipes existed (no recipe, pretrained None) still resumes
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("recipe", "stem_bn_momentum")}
    assert config_differences({**old, "pretrained": None}, cfg.to_dict()) == []


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(arch="vgg"), "unknown arch"),
        (dict(head="both"), "unknown head"),
        (dict(lr=0.0), "lr must be"),
        (dict(lr=float("nan")), "lr must be"),
        (dict(lr_decay=1.5), "lr_decay"),
        (dict(epochs=0), "epochs"),
        (dict(epochs=2.5), "epochs"),
        (dict(batch_size=True), "batch_size"),
        (dict(patch_size=8), "smallest patch bagnet9 accepts"),
        (dict(arch="bagnet33", patch_size=32), "bagnet33"),
        (dict(device="gpu"), "device"),
        (dict(augment="yes"), "augment"),
        (dict(num_workers=-1), "num_workers"),
        (dict(color_jitter=2.0), "color_jitter"),
        (dict(recipe="fast"), "unknown recipe 'fast'; allowed: default, paper"),
        (dict(pretrained="imagenet", width=8), "width 64 only"),
        (dict(arch="admil", pretrained="imagenet"), "no published ImageNet weights"),
        (dict(pretrained=""), "pretrained must be 'imagenet', 'none' or a local file"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(MilsilError, match=match):
        TrainConfig(**kw)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(MilsilError, match="unknown training setting.*'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_cuda_request_without_cuda_is_an_error(tiny, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")  # pragma: no cover
    with pytest.raises(MilsilError, match="CUDA is not available"):
        train_model(tiny_config(device="cuda"), tiny[1], [], CLASSES, tmp_path)


def test_bad_records_are_errors(tiny, tmp_path):
    records = tiny[1]
    with pytest.raises(MilsilError, match="training set is empty"):
        train_model(tiny_config(), [], [], CLASSES, tmp_path)
    bad = [BagRecord(records[0].path, 5, "p0")]
    with pytest.raises(MilsilError, match="label 5"):
        train_model(tiny_config(), bad, [], CLASSES, tmp_path)
    with pytest.raises(MilsilError, match="at least 2 classes"):
        train_model(tiny_config(), records, [], ["only"], tmp_path)


# ------------------------------------------------------------------------------- losses


def test_loss_terms_per_head():
    torch.manual_seed(0)
    sil = torch.randn(3, 4, 2, requires_grad=True)
    mil = torch.randn(3, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 1])
    out = BagOutput(sil_logits=sil, mil_logits=mil)

    loss_sil, parts = bag_loss(out, labels, "sil")
    expected_sil = F.cross_entropy(sil.reshape(12, 2), labels.repeat_interleave(4))
    assert torch.allclose(loss_sil, expected_sil) and set(parts) == {"sil_loss"}

    loss_mil, parts = bag_loss(out, labels, "mil")
    assert torch.allclose(loss_mil, F.cross_entropy(mil, labels)) and set(parts) == {"mil_loss"}
    # the MIL loss ignores the per-patch logits entirely
    grad_sil, grad_mil = torch.autograd.grad(loss_mil, (sil, mil), allow_unused=True)
    assert grad_sil is None and grad_mil.abs().sum() > 0

    loss_both, parts = bag_loss(out, labels, "milsil")
    assert torch.allclose(loss_both, expected_sil + F.cross_entropy(mil, labels))
    assert set(parts) == {"sil_loss", "mil_loss"}


def test_sil_loss_needs_patch_logits():
    out = BagOutput(sil_logits=None, mil_logits=torch.zeros(1, 2))
    with pytest.raises(MilsilError, match="per-patch logits"):
        bag_loss(out, torch.tensor([0]), "milsil")
    with pytest.raises(MilsilError, match="unknown head"):
        bag_loss(out, torch.tensor([0]), "attention")


# ------------------------------------------------------------------------- train_model


def test_train_writes_checkpoints_logs_and_progress(tiny, tmp_path):
    events: list[TrainProgress] = []
    res = train_model(
        tiny_config(), tiny[1], tiny[1][:4], CLASSES, tmp_path, progress=events.append
    )
    assert not res.stopped and len(res.history) == 2
    assert res.last_checkpoint.is_file() and res.best_checkpoint.is_file()
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for key in (
        "train_loss",
        "train_sil_accuracy",
        "train_mil_accuracy",
        "val_loss",
        "val_mil_accuracy",
        "val_sil_accuracy",
        "val_mil_auroc",
        "val_sil_auroc",
        "lr",
    ):
        assert key in lines[0]
    assert lines[1]["lr"] == pytest.approx(lines[0]["lr"] * 0.9)  # per-epoch exponential decay
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "finished" and run["config"]["width"] == 8
    assert run["data"]["train"]["bags"] == 12 and "torch" in run["versions"]
    payload = read_checkpoint(res.last_checkpoint)
    assert payload["training_state"]["epoch"] == 2 and "optimizer" in payload["training_state"]
    assert payload["provenance"]["config"]["lr"] == 1e-3
    assert payload["provenance"]["dataset"]["train"]["patients"] == 4
    model = load_checkpoint(res.best_checkpoint)
    assert model.class_names == CLASSES and model.head == "milsil"

    kinds = [e.event for e in events]
    steps = [e for e in events if e.event == "step"]
    assert len(steps) == 2 * steps[0].steps_per_epoch == 12  # 12 bags, 2 per batch
    assert kinds.count("epoch") == 2 and kinds[-1] == "end" and events[-1].state == "finished"
    epoch_events = [e for e in events if e.event == "epoch"]
    assert not math.isnan(epoch_events[0].val_mil_accuracy)
    assert all(e.eta_seconds >= 0 for e in steps)


def test_finished_run_is_not_retrained(tiny, tmp_path):
    cfg = tiny_config(epochs=1)
    first = train_model(cfg, tiny[1], [], CLASSES, tmp_path)
    before = (tmp_path / "last.pt").stat().st_mtime_ns
    events: list[TrainProgress] = []
    again = train_model(cfg, tiny[1], [], CLASSES, tmp_path, progress=events.append)
    assert [e.event for e in events] == ["end"]
    assert (tmp_path / "last.pt").stat().st_mtime_ns == before
    assert again.history == first.history
    with pytest.raises(MilsilError, match="different settings.*lr"):
        train_model(tiny_config(epochs=1, lr=5e-3), tiny[1], [], CLASSES, tmp_path)
    with pytest.raises(MilsilError, match="different data"):
        train_model(cfg, tiny[1][:6], [], CLASSES, tmp_path)


def test_patience_stops_after_that_many_epochs_without_a_new_best(tiny, tmp_path, monkeypatch):
    """Only epoch 1 counts as best here, so with patience 2 the run trains epochs 1-3 of
    10 and stops; rerun, it stays stopped. Patience needs validation records."""
    monkeypatch.setattr("milsil.engine.loop.is_better", lambda row, best: best is None)
    records = tiny[1]
    cfg = tiny_config(epochs=10, patience=2)
    res = train_model(cfg, records[:9], records[9:], CLASSES, tmp_path)
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.best_epoch == 1
    again = train_model(cfg, records[:9], records[9:], CLASSES, tmp_path)
    assert len(again.history) == 3
    with pytest.raises(MilsilError, match="patience 2 .* needs validation records"):
        train_model(cfg, records, [], CLASSES, tmp_path / "none")
    for bad in (-1, 1.5, True):
        with pytest.raises(MilsilError, match="patience must be an integer from 0"):
            tiny_config(patience=bad)
    assert TrainConfig().patience == 0  # off: train all epochs


def test_stop_and_resume_equals_uninterrupted(tiny, tmp_path):
    """Stopping mid-epoch, then resuming, reaches bit-identical weights and history."""
    cfg = tiny_config(epochs=2)
    full = train_model(cfg, tiny[1], tiny[1][:4], CLASSES, tmp_path / "full")

    calls = {"n": 0}

    def stop_after_8() -> bool:  # 6 steps per epoch: stops at step 2 of epoch 2
        calls["n"] += 1
        return calls["n"] > 8

    events: list[TrainProgress] = []
    part = train_model(
        cfg,
        tiny[1],
        tiny[1][:4],
        CLASSES,
        tmp_path / "cut",
        should_stop=stop_after_8,
        progress=events.append,
    )
    assert part.stopped and len(part.history) == 1
    assert events[-1].state == "cancelled"
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "cancelled"
    state = read_checkpoint(tmp_path / "cut" / "last.pt")["training_state"]
    assert (state["epoch"], state["step"]) == (1, 2)

    resumed = train_model(cfg, tiny[1], tiny[1][:4], CLASSES, tmp_path / "cut")
    assert not resumed.stopped and len(resumed.history) == 2
    a = read_checkpoint(full.last_checkpoint)["state_dict"]
    b = read_checkpoint(resumed.last_checkpoint)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    drop = ("epoch_seconds", "elapsed_seconds", "timing")
    strip = [{k: v for k, v in h.items() if k not in drop} for h in full.history]
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == strip
    log = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [1, 2]


def test_stop_before_first_step(tiny, tmp_path):
    res = train_model(tiny_config(), tiny[1], [], CLASSES, tmp_path, should_stop=lambda: True)
    assert res.stopped and res.history == [] and res.last_checkpoint.is_file()


def test_best_checkpoint_selection_rule():
    assert is_better({"val_mil_accuracy": 0.8, "val_loss": 0.9}, None)
    best = {"val_mil_accuracy": 0.8, "val_loss": 0.5}
    assert is_better({"val_mil_accuracy": 0.9, "val_loss": 2.0}, best)
    assert not is_better({"val_mil_accuracy": 0.7, "val_loss": 0.1}, best)
    assert is_better({"val_mil_accuracy": 0.8, "val_loss": 0.4}, best)  # tie -> lower loss
    assert not is_better({"val_mil_accuracy": 0.8, "val_loss": 0.5}, best)  # full tie: keep
    assert not is_better({"val_mil_accuracy": float("nan"), "val_loss": 0.1}, best)


def test_best_checkpoint_is_the_best_validation_epoch(tiny, tmp_path):
    res = train_model(tiny_config(epochs=3, lr=3e-3), tiny[1], tiny[1][:6], CLASSES, tmp_path)
    hist = res.history
    expected = max(hist, key=lambda h: (h["val_mil_accuracy"], -h["val_loss"], -h["epoch"]))
    assert res.best_epoch == expected["epoch"]
    assert read_checkpoint(res.best_checkpoint)["provenance"]["epoch"] == expected["epoch"]
    assert [h["best"] for h in hist].count(True) >= 1


def test_without_validation_best_is_last(tiny, tmp_path):
    res = train_model(tiny_config(head="sil"), tiny[1], [], CLASSES, tmp_path)
    assert res.best_epoch == 2
    best, last = read_checkpoint(res.best_checkpoint), read_checkpoint(res.last_checkpoint)
    assert best["provenance"]["epoch"] == 2 and "training_state" not in best
    for key in best["state_dict"]:
        assert torch.equal(best["state_dict"][key], last["state_dict"][key])


def test_admil_trains_on_mil_only(tiny, tmp_path):
    res = train_model(tiny_config(arch="admil", epochs=1), tiny[1], tiny[1][:4], CLASSES, tmp_path)
    model = load_checkpoint(res.best_checkpoint)
    assert model.head == "mil"
    assert res.history[0]["train_sil_accuracy"] is None  # no per-patch outputs


def test_cli_train_and_rerun(tiny, tmp_path, capsys):
    root = tiny[0]
    out = tmp_path / "run"
    flags = "--width 8 --epochs 1 --patch-size 16 --batch-size 4 --lr 1e-3 --device cpu"
    argv = ["train", str(root), "--out", str(out), *flags.split(), "--val-fraction", "0.25"]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "bagnet9 width 8 head milsil" in text and "epoch 1/1" in text and "best:" in text
    assert (out / "best.pt").is_file()
    assert cli_main(argv) == 0
    assert "already holds a finished run (1 epochs)" in capsys.readouterr().out
    assert cli_main([*argv, "--epochs", "2"]) == 0
    assert "resuming the run" in capsys.readouterr().out
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert cli_main(["train", str(root), "--out", str(out), "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err


# ----------------------------------------------------------------------------- acceptance

# A from-scratch width-16 BagNet-9 on CPU, in about a minute of training. The paper's lr
# 1e-4 assumes ImageNet weights and hundreds of steps; from scratch, 12 epochs of 7 steps
# need 2e-3 (decayed x0.8 per epoch). Batches of 8 bags keep BatchNorm statistics stable:
# with 4, the epoch loss jumped by 30-50 % late in training and held-out MIL accuracy
# fell to 0.83-0.89 on some seeds. Measured on this dataset (seeds 0-2, held-out 18 bags):
# MIL accuracy 1.0, logit-heatmap pixel AUROC 0.935-0.94.
ACCEPT_LR = 2e-3
ACCEPT_DECAY = 0.8
ACCEPT_EPOCHS = 12
ACCEPT_BATCH = 8


def test_acceptance_synthetic_training_and_heatmap(tmp_path):
    """End to end on CPU: synthetic H&E bags -> MIL-SIL BagNet-9 -> held-out accuracy and
    a logit heatmap that finds the malignant nuclei (scored on the valid interior, where
    each pixel's 9x9 window lies inside the image).
    """
    from milsil.data import load_dataset, load_mask, load_rgb, patient_split
    from milsil.data.synth import synthesize_dataset
    from milsil.engine.metrics import pixel_auroc
    from milsil.engine.validation import evaluate_model
    from milsil.experiments.localization import class_log_odds
    from milsil.inference.heatmap import logit_heatmap

    start = time.monotonic()
    manifest = synthesize_dataset(tmp_path / "data", patients=12, images_per_patient=6, size=128)
    records, classes = load_dataset(manifest)
    train, test = patient_split(records, test_fraction=0.25, seed=0)
    cfg = TrainConfig(
        arch="bagnet9",
        head="milsil",
        width=16,
        epochs=ACCEPT_EPOCHS,
        lr=ACCEPT_LR,
        lr_decay=ACCEPT_DECAY,
        batch_size=ACCEPT_BATCH,
        patch_size=64,
        seed=0,
        device="cpu",
    )
    res = train_model(cfg, train, [], classes, tmp_path / "run")
    model = load_checkpoint(res.best_checkpoint)
    metrics = evaluate_model(model, test, 64, "cpu")
    assert metrics["mil_accuracy"] >= 0.9, metrics

    target = classes.index("malignant")
    aurocs = []
    inner = (slice(4, -4), slice(4, -4))  # half of BagNet-9's receptive field
    for r in test:
        if r.label == target:
            heat = class_log_odds(logit_heatmap(model, load_rgb(r.path)), target)
            aurocs.append(pixel_auroc(heat[inner], load_mask(r.mask)[inner]))
    assert len(aurocs) >= 4
    assert float(np.mean(aurocs)) >= 0.85, aurocs
    print(
        f"acceptance: MIL acc {metrics['mil_accuracy']:.3f}, SIL acc {metrics['sil_accuracy']:.3f}, "
        f"pixel AUROC {np.mean(aurocs):.3f} over {len(aurocs)} images, "
        f"{time.monotonic() - start:.0f}s"
    )
