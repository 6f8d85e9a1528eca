"""Exact by default on CUDA: every dense pass runs with TF32 off (or on, in the fast mode)
and the caller's settings are back as soon as the pass returns, between bands too. The
flags are PyTorch's and exist on CPU builds, so this is checked here; the numbers on a GPU
are bench/gpu_suite.py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dense_support import watch_dense_passes

import milsil.inference.heatmap as heatmap
from milsil.errors import MilsilError
from milsil.inference.precision import fp32_precision
from milsil.models import create_model

FLAGS = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)


@pytest.fixture
def caller_flags():
    """The caller's own settings (not the defaults), restored after the test."""
    saved = [f.fp32_precision for f in FLAGS]
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cuda.matmul.fp32_precision = "none"
    yield ["tf32", "none"]
    for f, old in zip(FLAGS, saved, strict=True):
        f.fp32_precision = old


def _recording(monkeypatch) -> list[list[str]]:
    """Record the flags each dense pass runs under."""
    seen: list[list[str]] = []

    def around(x, run):
        seen.append([f.fp32_precision for f in FLAGS])
        return run()

    watch_dense_passes(monkeypatch, around)
    return seen


def _model():
    torch.manual_seed(0)
    return create_model("bagnet9", num_classes=2, head="milsil", width=4).eval()


@pytest.mark.parametrize(("precision", "inside"), [("exact", "ieee"), ("tf32", "tf32")])
def test_each_pass_runs_in_its_mode_and_the_callers_flags_return(
    monkeypatch, caller_flags, precision, inside
):
    seen = _recording(monkeypatch)
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    bands = heatmap.iter_logit_bands(_model(), image, stride=1, tile=8, precision=precision)
    for _ in bands:  # between bands the caller's settings hold
        assert [f.fp32_precision for f in FLAGS] == caller_flags
    assert len(seen) >= 4 and all(s == [inside, inside] for s in seen)
    assert [f.fp32_precision for f in FLAGS] == caller_flags


def test_the_default_is_exact_and_an_error_inside_restores(caller_flags):
    image = np.zeros((16, 16, 3), np.uint8)
    with fp32_precision():
        assert [f.fp32_precision for f in FLAGS] == ["ieee", "ieee"]
    with pytest.raises(RuntimeError), fp32_precision("tf32"):
        raise RuntimeError("the pass failed")
    assert [f.fp32_precision for f in FLAGS] == caller_flags
    with pytest.raises(MilsilError, match="precision must be one of exact, tf32; got 'fast'"):
        heatmap.logit_heatmap(_model(), image, precision="fast")
    exact = heatmap.logit_heatmap(_model(), image)
    fast = heatmap.logit_heatmap(_model(), image, precision="tf32")
    assert torch.equal(exact, fast)  # a CPU has no TF32: both are float32


@pytest.mark.parametrize(("precision", "inside"), [("exact", "ieee"), ("tf32", "tf32")])
def test_a_bags_backbone_pass_runs_in_its_mode_too(caller_flags, precision, inside):
    """ClassifyBag's pass (bag_pass: pooled features and familiarity from one feature map)
    is not a dense heatmap pass, and was run under CUDA's defaults (TF32 on) before."""
    from milsil.inference.familiarity import bag_pass

    model, seen = _model(), []
    original = model.feature_map

    def feature_map(x):
        seen.append([f.fp32_precision for f in FLAGS])
        return original(x)

    model.feature_map = feature_map
    tiles = [np.zeros((24, 24, 3), np.uint8)] * 3
    passed = bag_pass(model, tiles, chunk=2, precision=precision)
    assert passed.features.shape[0] == 3
    assert seen == [[inside, inside]] * 2  # two chunks, each in the mode
    assert [f.fp32_precision for f in FLAGS] == caller_flags
