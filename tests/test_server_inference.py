"""InferenceService over a real channel: Heatmap == logit_heatmap, ClassifyBag, Annotate, bad input."""

from __future__ import annotations

import io
import math
import random
import threading
import time

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from server_support import RAW_OUTLINES, register_tiny_model, running_server

from milsil.client import MilsilClient, assemble_heatmap, encode_tile, image_tiles
from milsil.inference.heatmap import logit_heatmap
from milsil.v1 import common_pb2, inference_service_pb2
from milsil.wsi.geojson import qupath_problems

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("srv")) as server:
        model = register_tiny_model(server, "tiny")
        register_tiny_model(server, "admil", arch="admil")
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
        yield server, client, model
        client.close()


def _image(h=41, w=53, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _still_serving(client: MilsilClient) -> None:
    assert client.health() == "SERVING"
    assert client.heatmap("models/tiny", _image(12, 12), stride=4).logits.shape == (2, 3, 3)


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_heatmap_equals_logit_heatmap(env, stride):
    _, client, model = env
    image = _image()
    result = client.heatmap("models/tiny", image, stride=stride, tile_size=16, probabilities=True)
    ref = logit_heatmap(model, image, stride=stride).numpy()
    assert result.logits.shape == ref.shape
    np.testing.assert_allclose(result.logits, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(
        result.probabilities, torch.softmax(torch.from_numpy(ref), 0).numpy(), atol=1e-5
    )
    assert result.header.stride == stride and result.class_names == ["benign", "malignant"]


def test_heatmap_float16_and_context_margin(env):
    _, client, model = env
    image = _image(60, 70, seed=1)
    margin = 6
    result = client.heatmap(
        "models/tiny", image, x=100, y=50, margin=margin, tile_size=24, value_type="float16"
    )
    ref = logit_heatmap(model, image, stride=1, margin=margin).numpy()
    assert result.logits.shape == ref.shape
    np.testing.assert_allclose(result.logits, ref, atol=2e-3 + 1e-3 * np.abs(ref).max(), rtol=2e-3)
    # The context matters: without it the border differs.
    without = logit_heatmap(model, image[margin:-margin, margin:-margin]).numpy()
    assert not np.allclose(without, ref, atol=1e-3)


def test_heatmap_tiles_in_any_order_with_downsample(env):
    _, client, model = env
    image = _image(40, 48, seed=2)
    ds = 2.0
    tiles = list(image_tiles(image, 13, "png", x=1000, y=2000, downsample=ds))
    random.Random(0).shuffle(tiles)
    config = inference_service_pb2.HeatmapConfig(
        model="models/tiny",
        region=common_pb2.Region(x=1000, y=2000, width=48 * ds, height=40 * ds, downsample=ds),
        stride=2,
    )
    requests = [inference_service_pb2.HeatmapRequest(config=config, tiles=tiles[:3])] + [
        inference_service_pb2.HeatmapRequest(tiles=[t]) for t in tiles[3:]
    ]
    responses = list(client.inference.Heatmap(iter(requests), timeout=60))
    assert responses[0].HasField("header")
    # one heatmap tile per request tile, then the region's familiarity alone
    assert len(responses) == 1 + len(tiles) + 1
    assert responses[-1].ListFields()[0][0].name == "familiarity"
    assert sorted(r.tile.tile_index for r in responses[1:-1]) == list(range(len(tiles)))
    header = responses[0].header
    assert header.step == 4.0 and header.origin_x == 1001.0
    result = assemble_heatmap(responses)
    np.testing.assert_allclose(
        result.logits, logit_heatmap(model, image, stride=2).numpy(), atol=1e-4
    )


def test_classify_bag_matches_model(env):
    _, client, model = env
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    response = client.classify_bag("models/tiny", tiles, encoding="png", tiles_per_message=2)
    from milsil.data import to_tensor

    with torch.no_grad():
        out = model(to_tensor(tiles, *model.normalization).unsqueeze(0))
    np.testing.assert_allclose(response.bag_logits, out.mil_logits[0].numpy(), atol=1e-4)
    sil = np.array([t.logits for t in response.tiles])
    np.testing.assert_allclose(sil, out.sil_logits[0].numpy(), atol=1e-4)
    assert [t.index for t in response.tiles] == list(range(5))
    assert math.isclose(sum(response.bag_probabilities), 1.0, rel_tol=1e-5)
    assert response.predicted_class in ("benign", "malignant")


def test_classify_bag_attention_model(env):
    _, client, _ = env
    tiles = np.random.default_rng(4).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    response = client.classify_bag("models/admil", tiles)
    assert len(response.tiles) == 0 and len(response.attention) == 3
    assert math.isclose(sum(response.attention), 1.0, rel_tol=1e-5)


def test_annotate_geojson_is_qupath_valid(env):
    _, client, model = env
    image = _image(48, 48, seed=5)
    ref = logit_heatmap(model, image, stride=2)
    prob = torch.softmax(ref, 0)[1].numpy()
    threshold = float(np.median(prob))
    fc, response = client.annotate(
        "models/tiny",
        image,
        x=10,
        y=20,
        stride=2,
        class_name="malignant",
        threshold=threshold,
        outline=RAW_OUTLINES,  # the untrained model's speckle: every object, as thresholded
    )
    assert qupath_problems(fc) == []
    assert fc["features"], "median threshold must give objects"
    assert len(response.objects) == len(fc["features"])
    for feature, obj in zip(fc["features"], response.objects, strict=True):
        props = feature["properties"]
        assert feature["id"] == obj.id
        assert props["objectType"] == "annotation"
        assert (
            props["classification"]["name"] == "malignant"
            and len(props["classification"]["color"]) == 3
        )
        assert obj.max_probability >= threshold - 1e-6 and obj.mean_probability >= threshold - 1e-6
        assert math.isclose(props["measurements"]["area"], obj.area)
        xs = [c[0] for ring in _rings(feature["geometry"]) for c in ring]
        assert min(xs) >= 10 and max(xs) <= 10 + 48
    total = sum(o.area for o in response.objects)
    assert 0 < total <= 48 * 48
    # Logit thresholds and min_area work too.
    fc2, r2 = client.annotate(
        "models/tiny", image, stride=2, threshold_on="logit", threshold=-100.0, min_area=10
    )
    assert len(fc2["features"]) == 1 and math.isclose(r2.objects[0].area, 48 * 48)


def _rings(geometry):
    if geometry["type"] == "Polygon":
        return geometry["coordinates"]
    return [ring for poly in geometry["coordinates"] for ring in poly]


def _png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _heatmap_call(client, tiles, region=(0, 0, 16, 16, 1), model="models/tiny", stride=1):
    x, y, w, h, ds = region
    config = inference_service_pb2.HeatmapConfig(
        model=model,
        region=common_pb2.Region(x=x, y=y, width=w, height=h, downsample=ds),
        stride=stride,
    )
    return lambda: list(
        client.inference.Heatmap(
            iter([inference_service_pb2.HeatmapRequest(config=config, tiles=tiles)]), timeout=30
        )
    )


def test_bad_input_status_codes(env):
    _, client, _ = env
    img = _image(16, 16)
    good = encode_tile(img)
    png = _png(img)
    cases = {
        "raw size mismatch": (
            _heatmap_call(
                client, [common_pb2.Tile(encoding=1, data=img.tobytes()[:-3], width=16, height=16)]
            ),
            INVALID,
            "bytes",
        ),
        "declared size wrong": (
            _heatmap_call(client, [common_pb2.Tile(encoding=2, data=png, width=15, height=16)]),
            INVALID,
            "declares",
        ),
        "truncated png": (
            _heatmap_call(
                client,
                [common_pb2.Tile(encoding=2, data=png[: len(png) // 2], width=16, height=16)],
            ),
            INVALID,
            "PNG",
        ),
        "garbage bytes": (
            _heatmap_call(
                client, [common_pb2.Tile(encoding=3, data=b"\x00garbage" * 50, width=16, height=16)]
            ),
            INVALID,
            "JPEG",
        ),
        "no encoding": (
            _heatmap_call(client, [common_pb2.Tile(data=img.tobytes(), width=16, height=16)]),
            INVALID,
            "encoding",
        ),
        "unknown model": (
            _heatmap_call(client, [good], model="models/nope"),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        "bad model name": (
            _heatmap_call(client, [good], model="../../etc/passwd"),
            INVALID,
            "model",
        ),
        "huge tile": (
            _heatmap_call(client, [common_pb2.Tile(encoding=1, data=b"x", width=100000, height=3)]),
            INVALID,
            "width",
        ),
        "huge region": (
            _heatmap_call(client, [good], region=(0, 0, 1e9, 1e9, 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "region",
        ),
        "nan region": (
            _heatmap_call(client, [good], region=(float("nan"), 0, 16, 16, 1)),
            INVALID,
            "finite",
        ),
        "negative region": (
            _heatmap_call(client, [good], region=(-5, 0, 16, 16, 1)),
            INVALID,
            ">= 0",
        ),
        "negative tile": (
            _heatmap_call(
                client,
                [common_pb2.Tile(encoding=1, data=img.tobytes(), width=16, height=16, x=-16)],
            ),
            INVALID,
            ">= 0",
        ),
        "missing coverage": (
            _heatmap_call(client, [good], region=(0, 0, 32, 16, 1)),
            INVALID,
            "cover",
        ),
        "bad stride": (_heatmap_call(client, [good], stride=1000), INVALID, "stride"),
        "not a bagnet": (
            _heatmap_call(client, [good], model="models/admil"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "receptive field",
        ),
        "no config": (
            lambda: list(
                client.inference.Heatmap(iter([inference_service_pb2.HeatmapRequest(tiles=[good])]))
            ),
            INVALID,
            "config",
        ),
        "empty stream": (lambda: list(client.inference.Heatmap(iter([]))), INVALID, "config"),
        "empty bag": (lambda: client.classify_bag("models/tiny", []), INVALID, "tile"),
        "unequal bag": (
            lambda: client.classify_bag("models/tiny", [img, img[:8]]),
            INVALID,
            "same size",
        ),
        "bag tile too small": (
            lambda: client.classify_bag("models/tiny", [img[:4, :4]]),
            INVALID,
            "at least",
        ),
    }
    for name, (call, expected, word) in cases.items():
        code, details = _code(call)
        assert code == expected, f"{name}: got {code} {details}"
        assert word.lower() in details.lower(), f"{name}: {details}"
        assert code != grpc.StatusCode.UNKNOWN
    _still_serving(client)


def test_annotate_bad_settings(env):
    _, client, _ = env
    img = _image(16, 16)
    for kwargs, word in [
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": 1.5}, "[0, 1]"),
        ({"class_name": "tumour"}, "benign, malignant"),
        ({"min_area": -1.0}, "min_area"),
        ({"simplify_tolerance": float("inf")}, "simplify_tolerance"),
    ]:
        code, details = _code(lambda kwargs=kwargs: client.annotate("models/tiny", img, **kwargs))
        assert code == INVALID and word in details, (kwargs, details)
    _still_serving(client)


def _wait_idle(server, timeout=5.0):
    deadline = time.monotonic() + timeout
    while server.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.state.in_flight


def test_deadline_and_cancellation_stop_compute(env):
    server, client, _ = env
    big = _image(400, 400, seed=7)
    started = time.monotonic()
    code, _ = _code(lambda: client.heatmap("models/tiny", big, stride=1, timeout=0.3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_idle(server) == 0, "server kept computing after the deadline"
    assert time.monotonic() - started < 6.0  # generous: the test machine is shared

    config = inference_service_pb2.HeatmapConfig(
        model="models/tiny", region=common_pb2.Region(width=400, height=400, downsample=1)
    )
    tiles = list(image_tiles(big, 200))
    call = client.inference.Heatmap(
        iter([inference_service_pb2.HeatmapRequest(config=config, tiles=tiles)])
    )
    first = next(call)  # the header: compute has started
    assert first.HasField("header")
    cancelled_at = time.monotonic()
    call.cancel()
    assert _wait_idle(server) == 0
    assert time.monotonic() - cancelled_at < 5.0
    _still_serving(client)


def test_busy_server_answers_resource_exhausted(tmp_path):
    """Busy (no queue room) is RESOURCE_EXHAUSTED with `milsil-retry: busy`; a client that
    does not retry sees it at once (tests/test_busy.py covers waiting and fairness)."""
    with running_server(tmp_path, compute_slots=1, max_waiting=0) as server:
        register_tiny_model(server, "tiny")
        client = MilsilClient(f"127.0.0.1:{server.port}", retry_busy=False)
        big = _image(300, 300, seed=8)
        errors = []

        def slow():
            try:
                client.heatmap("models/tiny", big, timeout=1.5)
            except grpc.RpcError as exc:
                errors.append(exc.code())

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 5
        while server.slots.in_use == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        code, details = _code(lambda: client.heatmap("models/tiny", _image(16, 16)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in details
        t.join()
        client.close()


def test_context_wider_than_the_receptive_field_is_accepted(env):
    """Tiles lying wholly in context the receptive field does not need are ignored, not
    refused (a client may send a generous margin); the result is unchanged."""
    _, client, model = env
    image = _image(72, 80, seed=4)
    margin = 20  # the tiny BagNet-9 needs 4
    result = client.heatmap("models/tiny", image, x=100, y=100, margin=margin, tile_size=8)
    ref = logit_heatmap(model, image, margin=margin).numpy()
    np.testing.assert_allclose(result.logits, ref, atol=1e-4, rtol=1e-4)
