"""Stain normalization (milsil.data.stain): the target round-trips through a checkpoint, the
library, the CLI and a real gRPC server give the same numbers, a stain shift is brought
back towards the target, chunks and bands do not change it, and a model without a target
or an image without tissue behaves as before."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from server_support import running_server, tiny_model

from milsil.client.grpc_client import MilsilClient
from milsil.data import BagRecord, to_tensor
from milsil.data.stain import estimate_stain, fit_stain_target, region_stain
from milsil.data.synth import patient_style, synth_image, vary_style
from milsil.engine.config import TrainConfig
from milsil.engine.validation import predict
from milsil.errors import CheckpointError, MilsilError
from milsil.inference.heatmap import iter_region_bands, logit_heatmap, stream_band_rows
from milsil.models import load_checkpoint, save_checkpoint
from milsil.models.stain import STAIN_KEY, model_stain, set_model_stain
from milsil.v1 import training_service_pb2
from milsil.wsi.heatmap import slide_heatmap, slide_stain
from milsil.wsi.reader import open_slide
from milsil.wsi.settings import SlideSettings
from milsil.wsi.synthetic import synthetic_slide
from milsil.wsi.tissue import tile_grid

BENCH = Path(__file__).resolve().parent.parent / "bench"


def milsil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "milsil.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def lab():
    """One lab's H&E (the training style) and images of a strongly shifted lab."""
    rng = np.random.default_rng(0)
    style = patient_style(rng)
    train = [synth_image(rng, 96, bool(i % 2), style)[0] for i in range(6)]
    shifted = []
    for seed in range(3):
        r = np.random.default_rng(10 + seed)
        other = vary_style(r, vary_style(r, patient_style(r)))
        shifted.append(synth_image(r, 128, True, other)[0])
    return train, shifted


@pytest.fixture(scope="module", params=["macenko", "reinhard"])
def stained(request, lab):
    """A width-8 BagNet carrying a target fitted on the training style."""
    model = tiny_model(width=8, seed=1)
    set_model_stain(model, fit_stain_target(request.param, lab[0]))
    return model


# ------------------------------------------------------------------ the target


def test_target_round_trips_through_a_checkpoint(stained, lab, tmp_path):
    target = model_stain(stained)
    assert target.images == 6
    path = save_checkpoint(stained, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)[STAIN_KEY]
    assert json.loads(json.dumps(raw)) == raw  # plain values
    assert raw["method"] == target.method
    loaded = load_checkpoint(path)
    assert model_stain(loaded) == target
    image = lab[1][0][:72, :80]
    np.testing.assert_array_equal(
        logit_heatmap(loaded, image, stride=2).numpy(),
        logit_heatmap(stained, image, stride=2).numpy(),
    )


def test_a_bad_target_in_a_checkpoint_is_one_line(stained, tmp_path):
    path = save_checkpoint(stained, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload[STAIN_KEY]["method"] = "vahadane"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="stain_normalization: method must be one of"):
        load_checkpoint(path)


def test_bad_method_names_the_allowed_values(tmp_path):
    with pytest.raises(MilsilError, match="one of none, macenko, reinhard; got 'vahadane'"):
        TrainConfig(stain_normalize="vahadane")
    result = milsil("train", str(tmp_path), "--out", str(tmp_path / "o"), "--stain-normalize", "x")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]  # argparse's one line (quoting varies)
    assert "--stain-normalize: invalid choice: 'x'" in error
    assert all(name in error for name in ("none", "macenko", "reinhard"))


def test_a_model_without_a_target_runs_as_before(lab):
    """No target: the uint8 path gives what the plain normalized tensor gives (a float
    input never passes through the stain code) and the checkpoint has no key."""
    model = tiny_model(width=8, seed=1)
    image = lab[1][0][:64, :72]
    mean, std = model.normalization
    plain = logit_heatmap(model, to_tensor(image, mean, std), stride=1).numpy()
    np.testing.assert_array_equal(logit_heatmap(model, image, stride=1).numpy(), plain)
    assert model_stain(model) is None


# ------------------------------------------------------------------ the effect


def _od_direction(pixels: np.ndarray) -> np.ndarray:
    """Mean optical-density direction of the stained pixels (a plain calculation)."""
    od = -np.log((pixels.reshape(-1, 3).astype(np.float64) + 1.0) / 256.0)
    od = od[np.linalg.norm(od, axis=1) > 0.3]
    v = od.mean(axis=0)
    return v / np.linalg.norm(v)


def test_a_stain_shift_is_brought_towards_the_target(lab):
    """Macenko: the angle between the mean stain direction of a shifted lab's image and the
    training lab's falls to under a third; Reinhard (which matches colour statistics,
    not stain vectors): the distance of the mean colour falls to under a third."""
    train, shifted = lab
    reference = np.concatenate([t.reshape(-1, 3) for t in train])
    ref_dir, ref_mean = _od_direction(reference), reference.mean(axis=0)
    for method in ("macenko", "reinhard"):
        model = tiny_model(width=8)
        set_model_stain(model, fit_stain_target(method, train))
        for image in shifted:
            out = region_stain(model, image)(image)
            assert out.shape == image.shape and out.dtype == np.uint8
            if method == "macenko":
                before = np.degrees(np.arccos(_od_direction(image) @ ref_dir))
                after = np.degrees(np.arccos(min(1.0, _od_direction(out) @ ref_dir)))
            else:
                before = np.linalg.norm(image.reshape(-1, 3).mean(axis=0) - ref_mean)
                after = np.linalg.norm(out.reshape(-1, 3).mean(axis=0) - ref_mean)
            assert before > 5 and after < before / 3, (method, before, after)


# ------------------------------------------------------------------ one region, one transform


def test_tiles_and_bands_do_not_change_the_normalization(stained, lab):
    """A tall image (more than one streamed band): tiled == untiled, and the region
    streamed in pieces (the server's road) == the whole image (the first-band rule)."""
    image = np.concatenate([lab[1][1], lab[1][2]], axis=0)[:, :72]  # 256 x 72
    assert image.shape[0] > stream_band_rows(stained, 72, 1, "cpu")
    whole = logit_heatmap(stained, image, stride=1).numpy()
    tiled = logit_heatmap(stained, image, stride=1, tile=24).numpy()
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    pieces = ((0, y, image[y : y + 40]) for y in range(0, image.shape[0], 40))
    streamed = np.concatenate(
        [logits.numpy() for _, logits in iter_region_bands(stained, 72, 256, pieces, 1)], axis=1
    )
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
    plain = tiny_model(width=8, seed=1)
    assert np.abs(logit_heatmap(plain, image, stride=1).numpy() - whole).max() > 1e-3


def test_blank_and_black_images_are_left_as_they_are(stained, caplog):
    plain = tiny_model(width=8, seed=1)
    for value in (245, 0):
        image = np.full((40, 48, 3), value, dtype=np.uint8)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="milsil.stain"):
            got = logit_heatmap(stained, image, stride=1, tile=16).numpy()
        np.testing.assert_array_equal(got, logit_heatmap(plain, image, stride=1).numpy())
        said = [r for r in caplog.records if "too little tissue" in r.getMessage()]
        assert len(said) == 1  # once for the region, not per chunk
    assert estimate_stain("macenko", np.full((8, 8, 3), 245, np.uint8)) is None
    with pytest.raises(MilsilError, match="no training image has enough tissue"):
        fit_stain_target("macenko", [np.full((32, 32, 3), 250, np.uint8)])


# ------------------------------------------------------------------ library, CLI, server


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``milsil train --stain-normalize macenko`` on a tiny synthetic set (1 epoch)."""
    root = tmp_path_factory.mktemp("stain_train")
    data, out = root / "data", root / "run"
    r = milsil("synth", str(data), "--patients", "4", "--images-per-patient", "2", "--size", "64")
    assert r.returncode == 0, r.stderr
    r = milsil(
        "train", str(data), "--out", str(out), "--width", "4", "--epochs", "1",
        "--patch-size", "32", "--stain-normalize", "macenko", "--device", "cpu",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return root, out / "best.pt"


def test_library_cli_and_server_agree(trained, lab):
    root, checkpoint = trained
    model = load_checkpoint(checkpoint)
    target = model_stain(model)
    assert target.method == "macenko" and target.images >= 1
    assert torch.load(checkpoint, weights_only=True)["provenance"]["config"]["stain_normalize"] == (
        "macenko"
    )
    image = np.concatenate([lab[1][0], lab[1][1]], axis=0)[:, :80]  # 256 x 80: two bands
    assert image.shape[0] > stream_band_rows(model, 80, 1, "cpu")
    library = logit_heatmap(model, image, stride=1).numpy()
    Image.fromarray(image).save(root / "shifted.png")
    r = milsil("heatmap", str(root / "shifted.png"), "--model", str(checkpoint), "--out",
               str(root / "maps"), "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(
        np.load(root / "maps" / "shifted.logits.npy"), library, rtol=0, atol=1e-5
    )
    tiles = image[:128, :64].reshape(4, 32, 2, 32, 3).transpose(0, 2, 1, 3, 4).reshape(8, 32, 32, 3)
    np.savez(root / "bag.npz", tiles=tiles)
    with running_server(root / "srv") as server:
        server.store.register_model(checkpoint, "stained", display_name="stained")
        with MilsilClient(f"127.0.0.1:{server.port}", timeout=120) as client:
            served = client.heatmap("models/stained", image, stride=1, tile_size=48).logits
            bag = client.classify_bag("models/stained", tiles)
    np.testing.assert_allclose(served, library, rtol=0, atol=1e-4)
    # ClassifyBag (the server's bags) == the training/validation road (BagDataset).
    records = [BagRecord(path=str(root / "bag.npz"), label=1, patient="p")]
    trained_road = np.log(predict(model, records, 32)["mil_probs"][0])  # log: not saturated
    np.testing.assert_allclose(np.log(bag.bag_probabilities), trained_road, rtol=0, atol=1e-3)
    # Without the target every answer differs: each road did normalize.
    set_model_stain(model, None)
    assert np.abs(logit_heatmap(model, image, stride=1).numpy() - library).max() > 1e-3
    assert np.abs(np.log(predict(model, records, 32)["mil_probs"][0]) - trained_road).max() > 0.1


def test_a_server_training_job_fits_and_stores_the_target(tmp_path):
    """StartTraining's `stain_normalize`: the job's model carries the target; a bad value
    is INVALID_ARGUMENT naming the allowed values, in one line."""
    rng = np.random.default_rng(2)
    bags = []
    for p in range(4):
        for b in range(2):
            image = synth_image(rng, 64, (p + b) % 2 == 1)[0]
            tiles = image.reshape(2, 32, 2, 32, 3).transpose(0, 2, 1, 3, 4).reshape(4, 32, 32, 3)
            bags.append((tiles, "malignant" if (p + b) % 2 else "benign", f"p{p}"))
    fast = {"width": 4, "epochs": 1, "batch_size": 4}
    with running_server(tmp_path / "srv") as server:
        with MilsilClient(f"127.0.0.1:{server.port}", timeout=120) as client:
            ds = client.upload_dataset(bags)
            with pytest.raises(grpc.RpcError) as info:
                client.start_training(ds.name, {**fast, "stain_normalize": "vahadane"})
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "none, macenko, reinhard" in info.value.details()
            assert "\n" not in info.value.details()
            job = client.start_training(ds.name, {**fast, "stain_normalize": "reinhard"})
            assert job.config.stain_normalize == "reinhard"
            done = client.wait_job(job.name)
            assert training_service_pb2.Job.State.Name(done.state) == "SUCCEEDED", done.error
            model = load_checkpoint(server.store.model_path(done.model.split("/")[-1]))
            assert client.get_model(done.model).stain_normalization == "reinhard"
            plain = client.start_training(ds.name, fast)
            assert plain.config.stain_normalize == "none"
            client.cancel_job(plain.name)
    target = model_stain(model)
    assert target.method == "reinhard" and target.images == 6  # 3 training patients x 2 bags


def test_a_slide_is_normalized_with_one_transform(stained, tmp_path):
    """The slide's transform comes from its tissue tiles once; the stitched map equals the
    whole image's map under that transform (no seams between slide tiles)."""
    path = synthetic_slide(tmp_path / "s.tif", 200, 150, block=100, seed=5)[0]
    settings = SlideSettings(stride=2, tile=72, tissue_only=False)
    with open_slide(path) as slide:
        heat, stopped = slide_heatmap(stained, slide, tmp_path / "w", settings)
        stain = slide_stain(stained, slide, tile_grid(slide, 72, 1.0, None), 1.0)
        pixels = slide.read(0, 0, 200, 150)
    assert not stopped and stain is not None
    plain = tiny_model(width=8, seed=1)  # the same weights, no target: given normalized pixels
    whole = logit_heatmap(plain, stain(pixels), stride=2).numpy()
    np.testing.assert_allclose(heat.to_array(), whole, rtol=0, atol=1e-4)


def test_bench_smoke(tmp_path):
    r = subprocess.run(
        [sys.executable, str(BENCH / "stain_bench.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "stain_bench.jsonl").read_text().splitlines()]
    assert {row["stain_normalize"] for row in rows} == {"none", "macenko"}
    assert all(0.0 <= row["mil_accuracy"] <= 1.0 for row in rows)
