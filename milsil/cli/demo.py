"""``milsil demo-server``: the whole QuPath workflow, end to end, through a real server.

Starts ``milsil serve`` as its own process on a free loopback port, uploads a dataset
with the Python client, trains on the server while following ``WatchJob``, annotates
malignant images with ``Annotate`` (QuPath GeoJSON), draws the outlines over the tissue,
and stops the server with SIGTERM (its graceful drain).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from milsil.errors import MilsilError


def draw_annotations(image: np.ndarray, collection: dict, scale: int = 3) -> Image.Image:
    """The image enlarged ``scale`` times with each annotation's outline (shell and holes)."""
    big = Image.fromarray(image).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST
    )
    draw = ImageDraw.Draw(big)
    for feature in collection["features"]:
        geometry = feature["geometry"]
        polygons = (
            geometry["coordinates"]
            if geometry["type"] == "MultiPolygon"
            else [geometry["coordinates"]]
        )
        color = tuple(feature["properties"]["classification"]["color"])
        for rings in polygons:
            for ring in rings:
                draw.line([(x * scale, y * scale) for x, y in ring], fill=color, width=2)
    return big


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "milsil.cli", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        proc.kill()
        raise MilsilError(f"the server did not start: {line.strip() or 'no output'}")
    return proc, line.split("listening on ")[1].split()[0]


def run(args: argparse.Namespace) -> int:
    from milsil.client import MilsilClient, bags_from_dataset
    from milsil.data import load_dataset, load_rgb

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records, classes = load_dataset(args.data)
    print(f"starting milsil serve (data dir {out / 'server'})")
    proc, target = start_server(out / "server")
    try:
        with MilsilClient(target, timeout=600) as client:
            print(f"server at {target}: health {client.health()}")
            dataset = client.upload_dataset(bags_from_dataset(args.data, args.patch_size), "demo")
            print(
                f"uploaded {dataset.name}: {dataset.bag_count} bags, {dataset.tile_count} tiles, "
                f"{dataset.patient_count} patients"
                + (" (identical content was already stored)" if dataset.already_existed else "")
            )
            config = {
                "arch": "bagnet9",
                "head": "milsil",
                "width": args.width,
                "epochs": args.epochs,
                "learning_rate": args.lr,
                "lr_decay": args.lr_decay,
                "batch_size": args.batch_size,
                "patch_size": args.patch_size,
                "seed": args.seed,
                "validation_fraction": 0.2,
            }
            started = client.start_training(dataset.name, config, display_name="demo")
            print(f"started {started.name}; following WatchJob")
            last_epoch, job = 0, started
            for job in client.watch_job(started.name):
                p = job.progress
                if p.epoch > last_epoch:
                    last_epoch = p.epoch
                    print(
                        f"  epoch {p.epoch}/{p.epochs}  loss {p.loss:.3f}  MIL acc {p.mil_accuracy:.3f}  "
                        f"val MIL acc {p.val_mil_accuracy:.3f}  eta {p.eta_seconds:.0f}s"
                    )
            state = type(job).State.Name(job.state)
            if state != "SUCCEEDED":
                raise MilsilError(f"training ended {state}: {job.error}")
            print(f"training done: model {job.model}")
            malignant = [r for r in records if classes[r.label] == "malignant"][-args.images :]
            for record in malignant:
                image = load_rgb(record.path)
                # The server's outline clean-up at its defaults (README, "Outline clean-up").
                collection, response = client.annotate(
                    job.model, image, stride=1, class_name="malignant", threshold=0.5
                )
                stem = out / Path(record.path).stem
                Path(f"{stem}.geojson").write_text(json.dumps(collection, indent=1))
                draw_annotations(image, collection).save(f"{stem}.annotations.png")
                print(
                    f"  {Path(record.path).name}: {len(collection['features'])} annotations -> {stem}.geojson"
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        print(f"server stopped (SIGTERM, exit code {code})")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo-server",
        help="the QuPath workflow end to end through a real server (upload, train, annotate)",
        description=(
            "Start milsil serve on a free loopback port, upload DATA, train a model on the server "
            "while following its progress, annotate the last malignant images into QuPath GeoJSON "
            "(and PNGs with the outlines drawn), then stop the server."
        ),
    )
    p.add_argument("data", help="dataset: manifest CSV or folder (e.g. from milsil synth)")
    p.add_argument("--out", default="demo_server", help="output folder")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay", type=float, default=0.8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=2, help="how many malignant images to annotate")
    p.set_defaults(func=run)
