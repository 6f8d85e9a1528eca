"""The SIL-label-noise benchmark (bench/scenario_bench.py) end to end in its smoke preset,
and its report (bench/scenario_report.py) on a small hand-built raw file."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import scenario_bench  # noqa: E402
import scenario_report  # noqa: E402

SMALL = Path(__file__).resolve().parent / "data" / "noise_bench_small.jsonl"


def test_report_recomputes_a_hand_computed_row(capsys):
    """tests/data/noise_bench_small.jsonl: one seed, two folds of two patients x two images.
    MILSIL gets 4/4 and 2/4 right, MILBagNet 3/4 and 2/4: accuracy 75.0 +- 35.4 and
    62.5 +- 17.7 (sample std of {1, 0.5} and {0.75, 0.5}); pairs +25 and 0 points: 12.5 +-
    17.7, one ahead, one tied. Pooled over patients: +1 correct image of 8, +12.5 points;
    only patient pA differs (+1 of 2 images), so a resample's difference is m/8 with
    m ~ Binomial(4, 1/4) copies of pA: its 2.5% and 97.5% quantiles are m = 0 and m = 3,
    [+0.0, +37.5]. Nucleus AUROC: MILSIL 1.0 and 0.75, MILBagNet 0.5 and 0.75 (the file's
    scores, counted by hand), so 0.875 +- 0.177, 0.625 +- 0.177 and a difference 0.250."""
    assert scenario_report.main([str(SMALL)]) == 0
    out = capsys.readouterr().out
    assert "| default | 0.5 | 16 | MILSIL | 75.0 ± 35.4 | 0.875 ± 0.177 | 2 |" in out
    assert "| default | 0.5 | 16 | MILBagNet | 62.5 ± 17.7 | 0.625 ± 0.177 | 2 |" in out
    assert (
        "| MILSIL − MILBagNet | 12.5 ± 17.7 | 1/1/0 | +12.5 [+0.0, +37.5] |" in out
        and "| 0.250 ± 0.354 | +0.250 [" in out
    )
    assert "no detectable difference between MILSIL and MILBagNet (+12.5 points" in out
    assert "commit 0000000" in out and "wall time 1.0 min" in out


def test_report_refuses_a_file_without_trainings(tmp_path, capsys):
    empty = tmp_path / "raw.jsonl"
    empty.write_text(json.dumps({"kind": "run"}) + "\n")
    assert scenario_report.main([str(empty)]) == 2
    assert "holds no training lines" in capsys.readouterr().err


def test_the_benchmark_refuses_a_dirty_tree(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scenario_bench, "git_state", lambda: ("abc123", True))
    assert scenario_bench.main(["--preset", "smoke", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes" in err and "--allow-dirty" in err
    assert not (tmp_path / "raw.jsonl").exists()


def test_smoke_preset_end_to_end(tmp_path, capsys):
    """Every step of the gpu preset, tiny: 4 patients x 1 image at noise 0.5, 2 folds,
    BagNet/MILBagNet/MILSIL/ADMIL with early stopping; the raw file says what ran, tests
    every image exactly once per model, and the report reads it."""
    out = tmp_path / "smoke"
    assert scenario_bench.main(["--preset", "smoke", "--out", str(out), "--allow-dirty"]) == 0
    run, trainings, end = scenario_report.read_raw(out / "raw.jsonl")
    assert re.fullmatch(r"[0-9a-f]{40}", run["commit"]) and isinstance(run["dirty"], bool)
    assert run["preset"] == "smoke" and end["wall_seconds"] > 0
    assert len(trainings) == 8  # 1 noise level x 2 folds x 4 models
    for model in ("sil", "mil", "milsil", "admil"):
        mine = [t for t in trainings if t["model"] == model]
        tested = [i["image"] for t in mine for i in t["images"]]
        assert sorted(tested) == sorted(set(tested)) and len(tested) == 4, model
        for t in mine:
            assert t["train_bags"] + t["val_bags"] + len(t["images"]) == 4
            assert 1 <= t["best_epoch"] <= t["epochs_run"] <= (2 if model == "admil" else 1)
            assert len(t["nuclei"]) == len(t["images"])
            assert sum(len(n["scores"]) for n in t["nuclei"]) > 0
    assert "MILSIL − MILBagNet" in capsys.readouterr().out
    assert not any((out / "runs").iterdir())  # checkpoints removed, results kept


def test_presets_hold_the_design():
    """The sizes the issue asks for: >= 30 patients x 10 images, 5 folds x >= 3 seeds, in
    both presets; the cpu preset has fewer noise levels, width 16 only and no ADMIL."""
    for name in ("cpu", "gpu"):
        p = scenario_bench.PRESETS[name]
        assert p.patients >= 30 and p.images >= 10 and p.folds == 5 and len(p.seeds) >= 3
    gpu = scenario_bench.PRESETS["gpu"]
    assert gpu.images >= 10 and set(gpu.models) == {"sil", "mil", "milsil", "admil"}
    assert gpu.size == 256 and gpu.widths == (64, 16) and gpu.noise == (0, 0.25, 0.5, 0.75)
    cpu = scenario_bench.PRESETS["cpu"]
    assert cpu.widths == (16,) and set(cpu.models) == {"sil", "mil", "milsil"}
    assert len(cpu.noise) >= 3 and cpu.epochs > cpu.patience  # early stopping can act
    with pytest.raises(SystemExit):
        scenario_bench.parse(["--preset", "huge"])


def test_docs_benchmark_tables_are_the_committed_raw_files_report():
    """docs/benchmark.md's CPU-preset results are exactly what scenario_report prints for
    the committed raw file (every table, interval, count and sentence), so no number there
    can drift from the data it claims to come from."""
    docs = BENCH.parent / "docs"
    run, trainings, end = scenario_report.read_raw(docs / "benchmark_noise_cpu.jsonl")
    report = scenario_report.markdown(run, trainings, end).strip()
    text = (docs / "benchmark.md").read_text()
    results = text[text.index("## Results: the CPU preset") :]
    assert report in results
    assert run["commit"][:7] in results and not run["dirty"]
    assert len(trainings) == 135  # 3 noise levels x 5 folds x 3 seeds x 3 models
