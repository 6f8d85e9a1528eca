"""`milsil serve` as a real process (SIGTERM drain) driven by `milsil client ...` commands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from server_support import tiny_model

from milsil.cli import main
from milsil.models import save_checkpoint
from milsil.wsi.geojson import qupath_problems


def test_serve_and_client_commands(tmp_path, capsys):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milsil.cli",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            "--grace",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stderr.read()
        target = line.split("listening on ")[1].split()[0]
        base = ["client", "--server", target, "--timeout", "60"]
        save_checkpoint(tiny_model(), tmp_path / "m.pt")
        assert main([*base, "models", "--import", str(tmp_path / "m.pt"), "--id", "tiny"]) == 0
        assert main([*base, "models"]) == 0
        assert "models/tiny" in capsys.readouterr().out
        image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "img.png")
        assert (
            main(
                [
                    *base,
                    "heatmap",
                    "models/tiny",
                    str(tmp_path / "img.png"),
                    "--out",
                    str(tmp_path / "h.npy"),
                    "--stride",
                    "2",
                ]
            )
            == 0
        )
        assert np.load(tmp_path / "h.npy").shape == (2, 20, 20)
        assert (
            main(
                [
                    *base,
                    "annotate",
                    "models/tiny",
                    str(tmp_path / "img.png"),
                    "--out",
                    str(tmp_path / "a.geojson"),
                    "--on",
                    "logit",
                    "--threshold",
                    "-100",
                    "--x",
                    "100",
                ]
            )
            == 0
        )
        collection = json.loads((tmp_path / "a.geojson").read_text())
        assert qupath_problems(collection) == [] and len(collection["features"]) == 1
        assert "in pixels (no pixel size: fell back to pixels)" in capsys.readouterr().out
        # The outline flags reach the server: the one 40 x 40 px object is 400 µm² at
        # 0.5 µm/px, kept at --min-area 400 and dropped at 401.
        for min_area, count in (("400", 1), ("401", 0)):
            argv = [*base, "annotate", "models/tiny", str(tmp_path / "img.png")]
            argv += ["--out", str(tmp_path / "u.geojson"), "--on", "logit", "--threshold", "-100"]
            argv += ["--min-area", min_area, "--pixel-size", "0.5"]
            assert main(argv) == 0
            collection = json.loads((tmp_path / "u.geojson").read_text())
            assert len(collection["features"]) == count
            assert collection["outline_settings"]["min_area"] == float(min_area)
            assert collection["outline_settings"]["units"] == "um"
            assert "in µm (0.5 µm/px)" in capsys.readouterr().out
        assert (
            main(
                [*base, "classify", "models/tiny", str(tmp_path / "img.png"), "--patch-size", "20"]
            )
            == 0
        )
        assert "bagProbabilities" in capsys.readouterr().out
        assert main([*base, "models", "models/nope"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        assert main([*base, "jobs"]) == 0
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - started < 15
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
