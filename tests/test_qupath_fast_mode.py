"""A server in a fast mode says so to every client (issue 16, item 2): ``milsil serve
--bf16`` computes its heatmaps in bfloat16, GetModel says the mode and its cost
(``heatmap_precision``, ``expected_max_logit_deviation``), and heatmap_to_annotations.groovy
prints one line naming it, since Annotate's answers (the outlines) have no header of
their own. Under QuPath's Groovy 4 when it is there, else Debian's 2.4."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image
from qupath_support import SCRIPTS, groovy_env, image_state, runner_results, start_runner
from server_support import register_tiny_model, running_server

from milsil.client import MilsilClient
from milsil.data.synth import synth_image


def test_a_bf16_server_says_its_mode_to_python_and_to_the_qupath_script(tmp_path):
    runtime = groovy_env.available("groovy4")
    if isinstance(runtime, str):
        runtime = groovy_env.available("groovy2.4")
    if isinstance(runtime, str):
        groovy_env.missing(runtime)
    rgb, _ = synth_image(np.random.default_rng(0), 96, True)
    Image.fromarray(rgb).save(tmp_path / "fast.png")
    stubs = groovy_env.compile_stubs(tmp_path / "stub_classes")
    with running_server(tmp_path / "server", precision="bf16") as server:
        register_tiny_model(server, "tiny")
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
        model = client.get_model("models/tiny")
        assert (model.heatmap_precision, model.expected_max_logit_deviation) == ("bf16", 2.4e-2)
        client.close()
        settings = {
            "milsil.server": f"127.0.0.1:{server.port}",
            "milsil.model": "tiny",
            "milsil.timeoutSeconds": "60",
            "milsil.stride": "4",
            "milsil.threshold": "0.5",
            "milsil.tileSize": "64",
        }
        spec = {
            "out": str(tmp_path / "out"),
            "images": [{"name": "fast.png", "path": str(tmp_path / "fast.png")}],
            "runs": [
                {
                    "id": "fast",
                    "script": str(SCRIPTS / "heatmap_to_annotations.groovy"),
                    "properties": settings,
                    "image": 0,
                }
            ],
        }
        proc = start_runner(runtime, spec, tmp_path / "out", stubs)
        results = runner_results(proc, tmp_path / "out", spec, timeout=300)
    log = results["logs"]["fast"]
    line = "milsil: fast.png: the server computes heatmaps in fast mode bf16 (logits within about 2.4e-02 of exact)"
    assert log.count(line) == 1, log
    assert "UNCAUGHT" not in log, log
    assert re.search(r"^milsil: fast\.png: whole image: \d+ \S+ region", log, re.M), log
    objects = image_state(results["states"]["fast"], "fast.png")["objects"]
    assert any(o["type"] == "annotation" for o in objects), objects
