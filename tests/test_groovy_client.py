"""The shared Groovy client (qupath_scripts/lib/MilsilClient.groovy) against the real server.

One JVM per Groovy runtime runs qupath_scripts/tests/client_check.groovy, which calls every
RPC shape through grpc-java + DynamicMessage with a bearer token: unary (Health, ListModels,
GetModel), client streaming (ClassifyBag, Annotate), server streaming (ExportModel) and
bidirectional streaming (Heatmap, MeasureObjects); plus deadlines, TLS, and the one-line errors. The numbers
it got are checked against the Python side. (UploadDataset -> StartTraining -> WatchJob run
through train_from_project.groovy in test_qupath_scripts.py.)

Runs under Debian's Groovy 2.4 (CI installs it) and QuPath 0.6's Groovy 4.0.26. Missing
Groovy or jars: skip locally, FAIL when CI is set.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from server_support import register_tiny_model, running_server, self_signed

from milsil.client import MilsilClient
from milsil.client.training import FINAL_JOB_STATES
from milsil.inference.heatmap import logit_heatmap, probabilities
from milsil.inference.objects import measure_objects

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "groovy_env", ROOT / "qupath_scripts" / "tools" / "groovy_env.py"
)
groovy_env = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("groovy_env", groovy_env)
_spec.loader.exec_module(groovy_env)

TOKEN = "groovy-s3cret"
# The Groovy client must get exactly what logit_heatmap computes on the same region.
HEATMAP_ATOL = 1e-4


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A token-protected server with a tiny model, and a TLS one sharing the token."""
    base = tmp_path_factory.mktemp("groovy_client")
    pem = self_signed(base / "pki")
    with running_server(base / "plain", token=TOKEN) as plain:
        model = register_tiny_model(plain)
        with running_server(
            base / "tls",
            token=TOKEN,
            tls_cert=str(pem["server_cert"]),
            tls_key=str(pem["server_key"]),
        ) as tls:
            register_tiny_model(tls, model_id="tiny-tls")
            yield {"plain": plain, "tls": tls, "ca": pem["ca"], "model": model}


def _checks(result) -> dict:
    checks = {}
    for line in result.stdout.splitlines():
        if line.startswith("CHECK "):
            _, name, payload = line.split(" ", 2)
            checks[name] = json.loads(payload)
    assert "DONE" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    return checks


@pytest.mark.parametrize("runtime", ["groovy2.4", "groovy4"])
def test_groovy_client_every_rpc_shape(servers, runtime):
    rt = groovy_env.RUNTIMES[runtime]()
    plain, tls = servers["plain"], servers["tls"]
    result = rt.run(
        ROOT / "qupath_scripts" / "tests" / "client_check.groovy",
        [
            str(ROOT / "qupath_scripts"),
            f"127.0.0.1:{plain.port}",
            TOKEN,
            "tiny",
            f"localhost:{tls.port}",
            str(servers["ca"]),
        ],
    )
    c = _checks(result)
    ok = {k: v["value"] for k, v in c.items() if isinstance(v, dict) and v.get("ok")}
    errors = {k: v["error"] for k, v in c.items() if isinstance(v, dict) and not v.get("ok")}

    # Unary, with the token.
    assert ok["health"] == "SERVING"
    assert ok["list_models"] == ["models/tiny"]
    assert ok["get_model"]["classes"] == ["benign", "malignant"] and ok["get_model"]["rf"] == 9
    # The halo the scripts send comes from the server (Model.context_pixels), not a copy of
    # its rule; the rule itself is checked here, independently.
    assert ok["get_model"]["context"] == ok["get_model"]["rf"] // 2 == 4
    # Final job states read from the descriptor (every Job.State above RUNNING), as in Python.
    assert ok["final_job_states"] == list(FINAL_JOB_STATES)
    assert FINAL_JOB_STATES == ("SUCCEEDED", "FAILED", "CANCELLED", "INTERRUPTED")

    # Client streaming: ClassifyBag over 5 tiles sent 2 per message.
    bag = ok["classify_bag"]
    assert bag["tiles"] == 5 and bag["model"] == "models/tiny"
    assert sum(bag["bag_probabilities"]) == pytest.approx(1, abs=1e-5)
    assert bag["predicted"] == bag["classes"][int(np.argmax(bag["bag_probabilities"]))]

    # Bidirectional streaming: the heatmap of 4 tiles sent from Groovy equals what the Python
    # client gets for the same region in one piece (same server: the transport, tiling and
    # float decoding of the Groovy side are exact), and agrees with milsil.inference.heatmap.
    rgb = np.frombuffer(base64.b64decode(c["region_pixels"]), np.uint8).reshape(40, 48, 3)
    with MilsilClient(f"127.0.0.1:{plain.port}", token=TOKEN) as py:
        reference = py.heatmap("models/tiny", rgb, x=100, y=200, stride=4, probabilities=True)
    expected = logit_heatmap(servers["model"], rgb, stride=4)
    hm = ok["heatmap"]
    assert hm["header"]["rows"] == 10 and hm["header"]["cols"] == 12
    assert hm["header"]["origin_x"] == pytest.approx(100.5)
    assert hm["header"]["context"] == hm["header"]["rf"] // 2 == 4
    got = np.full((2, 10, 12), np.nan, np.float32)
    got_p = np.full((2, 10, 12), np.nan, np.float32)
    for t in hm["tiles"]:
        shape = (2, t["rows"], t["cols"])
        sl = np.s_[:, t["row"] : t["row"] + t["rows"], t["col"] : t["col"] + t["cols"]]
        got[sl] = np.asarray(t["logits"], np.float32).reshape(shape)
        got_p[sl] = np.asarray(t["probabilities"], np.float32).reshape(shape)
    np.testing.assert_allclose(got, reference.logits, atol=1e-6)
    np.testing.assert_allclose(got_p, reference.probabilities, atol=1e-6)
    np.testing.assert_allclose(got_p, probabilities(torch.from_numpy(got)).numpy(), atol=1e-5)
    np.testing.assert_allclose(got, expected.numpy(), atol=HEATMAP_ATOL)

    # Client streaming: Annotate returns QuPath GeoJSON (validated in test_qupath_scripts too).
    geo = json.loads(ok["annotate"]["geojson"])
    assert geo["type"] == "FeatureCollection" and ok["annotate"]["objects"] == len(geo["features"])
    for f in geo["features"]:
        assert f["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}

    # Bidirectional streaming: MeasureObjects from Groovy (objects in messages of 3, then the
    # same 4 tiles) equals the Python client's call and the library's numbers on the heatmap
    # of the whole region (level-0 geometries: the region's origin is (100, 200)).
    shapes = json.loads(c["object_shapes"])
    measured = ok["measure_objects"]
    assert measured["header"] == {
        "model": "models/tiny",
        "classes": ["benign", "malignant"],
        "count": 4,
        "context": 4,
    }
    assert measured["starts"] == 1
    assert [m["id"] for m in measured["objects"]] == list(shapes)
    with MilsilClient(f"127.0.0.1:{plain.port}", token=TOKEN) as py:
        py_objects = py.measure_objects("models/tiny", list(shapes.items()), rgb, x=100, y=200)
    heat = logit_heatmap(servers["model"], rgb, stride=1)
    library = measure_objects(heat, list(shapes.values()), origin=(100, 200))
    got_mean = np.array([m["mean"] for m in measured["objects"]])
    got_max = np.array([m["max"] for m in measured["objects"]])
    got_p = np.array([m["p"] for m in measured["objects"]])
    got_pixels = [m["pixels"] for m in measured["objects"]]
    np.testing.assert_allclose(got_mean, py_objects.mean_logits, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_max, py_objects.max_logits, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_p, py_objects.probabilities, rtol=1e-6, atol=1e-7)
    assert got_pixels == py_objects.pixels.tolist() == library.pixels.tolist()
    np.testing.assert_allclose(got_mean, library.mean_logit, rtol=1e-3, atol=HEATMAP_ATOL)
    np.testing.assert_allclose(got_max, library.max_logit, rtol=1e-3, atol=HEATMAP_ATOL)
    np.testing.assert_allclose(got_p, library.p, rtol=1e-3, atol=HEATMAP_ATOL)
    assert got_pixels[3] == 0 and min(got_pixels[:3]) > 0  # the speck: its centroid's pixel
    # With a callback every measurement goes there, after the header, and none is kept.
    assert ok["measure_objects_callback"] == {
        "ids": [f"models/tiny {i}" for i in shapes],
        "kept": 0,
    }

    # Server streaming: the exported bytes are the registered checkpoint.
    assert ok["export_model"]["sha256"] == ok["get_model"]["sha256"]
    assert ok["export_model"]["bytes"] == ok["get_model"]["size"]

    # Deadlines, auth, a dead server, a missing descriptor, TLS: one line each.
    for name, code in [
        ("unknown_model", "NOT_FOUND"),
        ("measure_objects_unknown_model", "NOT_FOUND"),
        ("deadline", "DEADLINE_EXCEEDED"),
        ("wrong_token", "UNAUTHENTICATED"),
        ("wrong_token_stream", "UNAUTHENTICATED"),
        ("server_down", "UNAVAILABLE"),
        ("bad_descriptor", "SETUP"),
    ]:
        assert errors[name].startswith(f"milsil: {code}: "), (name, errors[name])
        assert "\n" not in errors[name]
    assert "Bearer" in errors["wrong_token"] and "MILSIL_TOKEN" in errors["wrong_token"]
    assert "cannot reach the milsil server" in errors["server_down"]
    if "tls_list_models" in ok:
        assert ok["tls_list_models"] == ["models/tiny-tls"]
    else:
        # Debian's libnetty-java is built without ALPN, so grpc-java cannot do TLS with it
        # (QuPath users take grpc-netty-shaded from Maven Central, which can); the client
        # must then say so in one line instead of failing obscurely.
        assert errors["tls_list_models"].startswith("milsil: SETUP: TLS needs ALPN"), errors
    # Plaintext to a TLS server: refused, in one line.
    assert errors["tls_plaintext_refused"].startswith("milsil: UNAVAILABLE: ")
    assert not set(errors) - {
        "unknown_model",
        "measure_objects_unknown_model",
        "deadline",
        "wrong_token",
        "wrong_token_stream",
        "server_down",
        "bad_descriptor",
        "tls_plaintext_refused",
        "tls_list_models",
    }, errors
