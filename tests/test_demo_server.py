"""`milsil demo-server`: the QuPath workflow end to end through a real `milsil serve` process."""

from __future__ import annotations

import json

from milsil.cli import main
from milsil.data.synth import synthesize_dataset
from milsil.wsi.geojson import qupath_problems


def test_demo_server_uploads_trains_annotates_and_stops(tmp_path, capsys):
    data = synthesize_dataset(tmp_path / "data", patients=4, images_per_patient=2, size=64, seed=0)
    out = tmp_path / "demo"
    code = main(
        [
            "demo-server",
            str(data),
            "--out",
            str(out),
            "--width",
            "8",
            "--epochs",
            "1",
            "--patch-size",
            "32",
            "--images",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "uploaded datasets/" in printed and "training done: model models/" in printed
    assert "server stopped (SIGTERM, exit code 0)" in printed
    geojson = sorted(out.glob("*.geojson"))
    assert len(geojson) == 1 and (out / f"{geojson[0].stem}.annotations.png").is_file()
    collection = json.loads(geojson[0].read_text())
    assert collection["type"] == "FeatureCollection" and qupath_problems(collection) == []
