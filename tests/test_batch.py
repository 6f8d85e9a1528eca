"""``milsil batch`` (resume, isolated failures, metadata) and torchrun/Gloo with 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize_batchnorm

from milsil.distributed import DistContext, _rank_batches, shard
from milsil.models import create_model, save_checkpoint
from milsil.wsi.geojson import qupath_problems
from milsil.wsi.synthetic import synthetic_slide

VENDOR = Path(__file__).parent / "data" / "openslide"
ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv, monkeypatch) -> int:
    from milsil import cli

    monkeypatch.setattr(
        cli,
        "COMMAND_MODULES",
        tuple(dict.fromkeys(cli.COMMAND_MODULES + ("milsil.cli.slides",))),
    )
    return cli.main(argv)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path]:
    """Two synthetic slides, a real Aperio file and a DICOM series; and a checkpoint."""
    root = tmp_path_factory.mktemp("batch")
    d = root / "slides"
    d.mkdir()
    synthetic_slide(d / "a.tif", 256, 192, block=128, seed=1)
    synthetic_slide(d / "b.tif", 256, 192, block=128, seed=2)
    shutil.copy(VENDOR / "small.svs", d / "small.svs")
    (d / "dicom").mkdir()
    for f in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(VENDOR / f, d / "dicom" / f)
    torch.manual_seed(0)
    model = randomize_batchnorm(
        create_model("bagnet9", 2, width=8, class_names=["benign", "malignant"])
    )
    ckpt = root / "model.pt"
    save_checkpoint(model, ckpt)
    return d, ckpt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_and_rank_batches():
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items
    batches = [[i] for i in range(5)]
    per = [
        _rank_batches(batches, DistContext(r, 2, r, torch.device("cpu"), "gloo")) for r in range(2)
    ]
    assert len(per[0]) == len(per[1]) == 3


def test_batch_isolates_failures_and_skips_finished(folder, tmp_path, monkeypatch, capsys):
    d, ckpt = folder
    work = tmp_path / "slides"
    shutil.copytree(d, work)
    shutil.copy(VENDOR / "unreadable.svs", work / "broken.svs")
    out = tmp_path / "out"
    argv = ["batch", str(work), "--model", str(ckpt), "--out", str(out), "--threshold", "0"]
    # --min-area 0: small.svs (16 x 16 px, 64 µm²) is below the default minimum object area
    argv += ["--all-tiles", "--stride", "4", "--min-area", "0"]
    assert run_cli(argv, monkeypatch) == 1
    captured = capsys.readouterr()
    assert "broken.svs" in captured.err and "1 slide(s) failed" in captured.err
    for name in ("a", "b", "small", "dicom"):
        data = json.loads((out / f"{name}.geojson").read_text())
        assert qupath_problems(data) == [] and data["features"]
        assert json.loads((out / f"{name}.json").read_text())["status"] == "ok"
    run = json.loads((out / "run.json").read_text())
    assert run["failed"] == 1 and run["model"]["sha256"] and "openslide" in run["versions"]
    assert run["params"]["stride"] == 4
    # rerun: the finished slides are skipped; the broken one fails again
    assert run_cli(argv, monkeypatch) == 1
    assert "4 skipped" in capsys.readouterr().out
    (work / "broken.svs").unlink()
    assert run_cli(argv, monkeypatch) == 0
    # other settings: not the same job, so recomputed
    assert run_cli(argv[:-1] + ["8"], monkeypatch) == 0
    assert "4 annotated" in capsys.readouterr().out


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)


def test_batch_under_torchrun_shards_slides(folder, tmp_path):
    d, ckpt = folder
    out = tmp_path / "out"
    res = _torchrun(
        [
            "-m",
            "milsil.cli.slides",
            str(d),
            "--model",
            str(ckpt),
            "--out",
            str(out),
            "--stride",
            "8",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    ranks = {
        json.loads((out / f"{n}.json").read_text())["rank"] for n in ("a", "b", "small", "dicom")
    }
    assert ranks == {0, 1}
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and len(run["slides"]) == 4


def test_train_ddp_two_gloo_processes(tmp_path):
    from milsil.data.synth import synthesize_dataset
    from milsil.models import load_checkpoint

    data = synthesize_dataset(tmp_path / "data", patients=2, images_per_patient=4, size=32)
    run = tmp_path / "run"
    args = [
        "-m",
        "milsil.cli",
        "train-ddp",
        str(data),
        "--out",
        str(run),
        "--width",
        "8",
        "--epochs",
        "1",
        "--patch-size",
        "16",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--lr",
        "1e-3",
    ]
    res = _torchrun(args, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["backend"] == "gloo" and info["epochs_completed"] == 1
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    assert load_checkpoint(run / "last.pt").config.width == 8


def test_batch_refuses_slides_that_would_share_outputs(tmp_path):
    """a.svs and a.tif would both write a.geojson: refused up front, nothing skipped."""
    from milsil.errors import MilsilError
    from milsil.wsi.batch import run_batch

    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "a.svs").write_bytes(b"x")
    (folder / "a.tif").write_bytes(b"x")
    with pytest.raises(MilsilError, match=r"several slides would write the same outputs \(a\)"):
        run_batch(folder, "m.pt", tmp_path / "out")
