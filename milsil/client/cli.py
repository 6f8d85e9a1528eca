"""``milsil client ...``: drive a running milsil server from the shell (demo, scripts, checks).

The inference commands print ``milsil: <image or slide>: unlike the training data (score S,
threshold T)`` on stderr when the server judged their input unlike the model's training
data (:meth:`milsil.client.messages.Familiarity.warning`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from milsil.client.messages import Familiarity
from milsil.client.outlines import add_outline_arguments, describe_outlines, outline_values
from milsil.errors import MilsilError


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "client",
        help="talk to a milsil server (classify, heatmap, annotate, annotate-slide, measure-objects, upload, train, jobs, watch, models)",
        description="Reference client of the milsil gRPC server. Exits non-zero with the gRPC status on errors.",
    )
    p.add_argument(
        "--server",
        default=os.environ.get("MILSIL_SERVER", "127.0.0.1:50051"),
        help="host:port (default $MILSIL_SERVER or 127.0.0.1:50051)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("MILSIL_TOKEN"),
        help="bearer token (default $MILSIL_TOKEN)",
    )
    p.add_argument("--ca", help="PEM CA certificate: use TLS and trust this CA")
    p.add_argument("--cert", help="PEM client certificate (mutual TLS)")
    p.add_argument("--key", help="PEM client key (mutual TLS)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per call (default: none)")
    sub = p.add_subparsers(dest="client_command", metavar="ACTION", required=True)

    c = sub.add_parser("classify", help="classify one image as a bag of patches")
    c.add_argument("model", help="models/{id}")
    c.add_argument("image", type=Path)
    c.add_argument(
        "--patch-size", type=int, default=0, help="patch side (default: the model's patch size)"
    )
    c.set_defaults(client_func=_classify)

    for name, func, text in (
        ("heatmap", _heatmap, "logit heatmap of an image (.npy out)"),
        ("annotate", _annotate, "QuPath GeoJSON of an image's class regions"),
    ):
        h = sub.add_parser(name, help=text)
        h.add_argument("model", help="models/{id}")
        h.add_argument("image", type=Path)
        h.add_argument(
            "--out",
            type=Path,
            required=True,
            help=".npy logits [C,H,W]" if name == "heatmap" else ".geojson file",
        )
        h.add_argument("--stride", type=int, default=1)
        h.add_argument("--x", type=float, default=0.0, help="level-0 x of the image's top-left")
        h.add_argument("--y", type=float, default=0.0, help="level-0 y of the image's top-left")
        h.add_argument("--downsample", type=float, default=1.0)
        h.add_argument("--tile-size", type=int, default=512)
        if name == "annotate":
            h.add_argument(
                "--class-name", default="", help="class to outline (default: the last class)"
            )
            h.add_argument(
                "--threshold",
                type=float,
                default=None,
                help="default 0.5 (probability) / 0 (logit)",
            )
            h.add_argument("--on", choices=("probability", "logit"), default="probability")
            add_outline_arguments(h, pixel_size_default="unknown")
        h.set_defaults(client_func=func)

    a = sub.add_parser(
        "annotate-slide",
        help="QuPath GeoJSON of a whole slide the server reads itself (serve --slide-root)",
        description=(
            "Ask the server to annotate a slide under its --slide-root: tissue only, "
            "resumable (run the same command again after an interruption), progress on "
            "stderr. Optionally the server writes a pyramidal probability TIFF under its "
            "output root."
        ),
    )
    a.add_argument("path", help="slide path relative to the server's slide root")
    a.add_argument("--model", required=True, help="models/{id}")
    a.add_argument("-o", "--out", type=Path, required=True, help=".geojson file to write")
    a.add_argument("--stride", type=int, default=8, help="map stride in pixels (default 8)")
    a.add_argument("--downsample", type=float, default=1.0, help="read at this downsample")
    a.add_argument("--threshold", type=float, default=None, help="probability (default 0.5)")
    a.add_argument(
        "--class-name", default="", help="class to outline (default: malignant, else the last)"
    )
    add_outline_arguments(a, pixel_size_default="the slide's metadata, on the server")
    a.add_argument("--tile-size", type=int, default=0, help="pixels per tile (default 1024)")
    a.add_argument("--all-tiles", action="store_true", help="compute glass too")
    a.add_argument(
        "--tiff",
        nargs="?",
        const="",
        default=None,
        metavar="REL_PATH",
        help="server also writes a probability TIFF (optionally at REL_PATH under its output root)",
    )
    a.set_defaults(client_func=_annotate_slide)

    o = sub.add_parser(
        "measure-objects",
        help="per-cell mean/max logit and probability (QuPath GeoJSON in and out)",
        description=(
            "Measure every object of a QuPath GeoJSON file (cells: their nucleus by default) "
            "on the server (MeasureObjects): the pixels of IMAGE are streamed, or with --slide "
            "the server reads a slide under its --slide-root. Writes the same features with "
            "'milsil mean logit(c)', 'milsil max logit(c)', 'milsil p(c)' and 'milsil pixels' "
            "added to properties.measurements."
        ),
    )
    o.add_argument("model", help="models/{id}")
    o.add_argument("image", type=Path, nargs="?", help="image file to stream (or --slide)")
    o.add_argument("--slide", default="", help="slide path under the server's --slide-root")
    o.add_argument("--objects", type=Path, required=True, help="QuPath GeoJSON, level-0 pixels")
    o.add_argument("-o", "--out", type=Path, required=True, help=".geojson file to write")
    o.add_argument("--x", type=float, default=0.0, help="level-0 x of the image's top-left")
    o.add_argument("--y", type=float, default=0.0, help="level-0 y of the image's top-left")
    o.add_argument("--downsample", type=float, default=1.0, help="level-0 pixels per pixel")
    o.add_argument("--roi", choices=("nucleus", "cell"), default="nucleus", help="for cells")
    o.add_argument("--tile-size", type=int, default=512)
    o.set_defaults(client_func=_measure_objects)

    u = sub.add_parser("upload", help="upload a dataset (manifest CSV or class folders)")
    u.add_argument("data", type=Path)
    u.add_argument(
        "--patch-size", type=int, default=64, help="images are cut into patches of this side"
    )
    u.add_argument("--name", default="", help="display name")
    u.set_defaults(client_func=_upload)

    t = sub.add_parser("train", help="start a training job (prints the job; --watch follows it)")
    t.add_argument("dataset", nargs="?", default="", help="datasets/{id}")
    t.add_argument("--resume", default="", help="jobs/{id} to resume instead")
    t.add_argument("--arch", default="")
    t.add_argument("--head", default="")
    t.add_argument("--recipe", default="", choices=("", "default", "paper"), help="'' = default")
    t.add_argument(
        "--pretrained",
        default="",
        choices=("", "none", "imagenet"),
        help="initialisation ('' = the recipe's; imagenet: the server downloads the weights)",
    )
    t.add_argument("--width", type=int, default=0, help="0 = the recipe's")
    t.add_argument("--epochs", type=int, default=0)
    t.add_argument("--lr", type=float, default=0.0, help="0 = the recipe's")
    t.add_argument("--lr-decay", type=float, default=0.0, help="0 = the recipe's")
    t.add_argument("--batch-size", type=int, default=0)
    t.add_argument("--patch-size", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.0)
    t.add_argument("--folds", type=int, default=0)
    t.add_argument("--fold", type=int, default=0)
    t.add_argument("--name", default="")
    t.add_argument("--watch", action="store_true", help="follow progress until the job ends")
    t.set_defaults(client_func=_train)

    j = sub.add_parser("jobs", help="list jobs, or show/cancel one")
    j.add_argument("job", nargs="?", help="jobs/{id}")
    j.add_argument("--cancel", action="store_true")
    j.add_argument("--state", default="", help="only jobs in this state")
    j.set_defaults(client_func=_jobs)

    w = sub.add_parser("watch", help="follow a job until it ends")
    w.add_argument("job", help="jobs/{id}")
    w.set_defaults(client_func=_watch)

    m = sub.add_parser("models", help="list models, or show/delete/export/import one")
    m.add_argument("model", nargs="?", help="models/{id} (or a checkpoint file with --import)")
    m.add_argument("--delete", action="store_true")
    m.add_argument("--export", type=Path, metavar="FILE")
    m.add_argument("--import", dest="import_file", type=Path, metavar="FILE")
    m.add_argument("--id", default="", help="model id for --import")
    m.set_defaults(client_func=_models)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import grpc

    from milsil.client import MilsilClient

    client = MilsilClient(
        args.server,
        token=args.token,
        root_certificates=args.ca,
        client_cert=args.cert,
        client_key=args.key,
        timeout=args.timeout,
        on_wait=lambda line: print(line, file=sys.stderr, flush=True),  # a busy server
    )
    try:
        return int(args.client_func(client, args) or 0)
    except grpc.RpcError as exc:
        print(
            f"milsil client {args.client_command}: {exc.code().name}: {exc.details()}",
            file=sys.stderr,
        )
        return 1
    finally:
        client.close()


def _print(message) -> None:
    from google.protobuf import json_format

    print(json.dumps(json_format.MessageToDict(message), indent=2))


def _warn(where: object, familiarity: Familiarity | None) -> None:
    """The warning line for an input unlike the training data (nothing otherwise)."""
    line = familiarity.warning(str(where)) if familiarity is not None else None
    if line:
        print(line, file=sys.stderr, flush=True)


def _load_image(path: Path):
    from milsil.data import load_rgb

    return load_rgb(path)


def _classify(client, args) -> int:
    from milsil.data import image_to_bag

    size = args.patch_size or client.get_model(args.model).patch_size
    if not size:
        raise MilsilError("the model records no patch size: pass --patch-size")
    response = client.classify_bag(args.model, image_to_bag(_load_image(args.image), size))
    _print(response)
    _warn(args.image, Familiarity.from_message(response.familiarity))
    return 0


def _heatmap(client, args) -> int:
    import numpy as np

    result = client.heatmap(
        args.model,
        _load_image(args.image),
        x=args.x,
        y=args.y,
        downsample=args.downsample,
        stride=args.stride,
        tile_size=args.tile_size,
    )
    np.save(args.out, result.logits)
    print(f"wrote {args.out}: logits {list(result.logits.shape)} classes {result.class_names}")
    _warn(args.image, result.familiarity)
    return 0


def _annotate(client, args) -> int:
    collection, response = client.annotate(
        args.model,
        _load_image(args.image),
        x=args.x,
        y=args.y,
        downsample=args.downsample,
        stride=args.stride,
        class_name=args.class_name,
        threshold=args.threshold,
        threshold_on=args.on,
        tile_size=args.tile_size,
        outline=outline_values(args),
        pixel_size_um=args.pixel_size,
    )
    args.out.write_text(json.dumps(collection))
    print(f"wrote {args.out}: {len(collection['features'])} {response.class_name} annotations")
    print(describe_outlines(collection))
    _warn(args.image, Familiarity.from_message(response.familiarity))
    return 0


def _measure_objects(client, args) -> int:
    from milsil.atomic import write_json_atomic
    from milsil.client.objects import add_measurements, object_geometry, read_features

    if (args.image is None) == (not args.slide):
        raise MilsilError("give IMAGE (pixels to stream) or --slide PATH (read by the server)")
    doc, features = read_features(args.objects)
    objects = [(str(k), object_geometry(f, k, args.roi)) for k, f in enumerate(features)]
    result = client.measure_objects(
        args.model,
        objects,
        _load_image(args.image) if args.image is not None else None,
        x=args.x,
        y=args.y,
        downsample=args.downsample,
        slide_path=args.slide,
        tile_size=args.tile_size,
    )
    outside = add_measurements(features, result.measurements())
    write_json_atomic(args.out, doc)
    print(
        f"wrote {args.out}: {len(features):,} objects measured ({', '.join(result.class_names)})"
        + (f"; {outside:,} outside the region: not measured" if outside else "")
    )
    _warn(args.image if args.image is not None else args.slide, result.familiarity)
    return 0


def _annotate_slide(client, args) -> int:
    interactive = sys.stderr.isatty()

    def progress(p) -> None:
        line = (
            f"{p.stage}: tiles {p.tiles_done}/{p.tiles_total}  {p.tissue_megapixels:.1f} MP tissue  "
            f"elapsed {p.elapsed_seconds:.0f}s  eta {p.eta_seconds:.0f}s"
        )
        if interactive:
            print(f"\r{line} ", end="", file=sys.stderr, flush=True)
        elif p.stage != "heatmap" or p.tiles_done == p.tiles_total:
            print(line, file=sys.stderr, flush=True)

    collection, result = client.annotate_slide(
        args.model,
        args.path,
        stride=args.stride,
        downsample=args.downsample,
        tissue_only=not args.all_tiles,
        tile_size=args.tile_size,
        class_name=args.class_name,
        threshold=args.threshold,
        outline=outline_values(args),
        pixel_size_um=args.pixel_size,
        write_tiff=args.tiff is not None,
        tiff_path=args.tiff or "",
        progress=progress,
    )
    if interactive:
        print(file=sys.stderr)
    args.out.write_text(json.dumps(collection))
    s = result.summary
    print(
        f"wrote {args.out}: {result.object_count} {s.class_name} annotations from "
        f"{s.tiles_total} tiles ({s.tissue_megapixels:.1f} MP tissue, {s.tiles_resumed} resumed)"
        + (f"; server TIFF: {s.tiff_path} (under its output root)" if s.tiff_path else "")
    )
    print(describe_outlines(collection))
    _warn(args.path, Familiarity.from_message(s.familiarity))
    _warn_features(args.path, collection)
    return 0


def _warn_features(where: str, collection: dict) -> None:
    """One line for the slide's annotations drawn where its slide tiles were unlike the
    training data (their ``milsil_familiarity`` property), when there are any."""
    unlike = [
        f["properties"]["milsil_familiarity"]
        for f in collection["features"]
        if f.get("properties", {}).get("milsil_familiarity", {}).get("unlike_training")
    ]
    if unlike:
        worst = max(unlike, key=lambda j: j["score"])
        print(
            f"milsil: {where}: {len(unlike)} of {len(collection['features'])} annotations lie "
            f"where the slide is unlike the training data (score up to {worst['score']:.3g}, "
            f"threshold {worst['threshold']:.3g})",
            file=sys.stderr,
            flush=True,
        )


def _upload(client, args) -> int:
    from milsil.client import bags_from_dataset

    _print(
        client.upload_dataset(bags_from_dataset(args.data, args.patch_size), display_name=args.name)
    )
    return 0


def _train(client, args) -> int:
    config = {
        "arch": args.arch,
        "head": args.head,
        "width": args.width,
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "lr_decay": args.lr_decay,
        "recipe": args.recipe,
        "pretrained": args.pretrained,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "seed": args.seed,
        "validation_fraction": args.val_fraction,
        "folds": args.folds,
        "fold": args.fold,
    }
    if not args.dataset and not args.resume:
        raise MilsilError("give a dataset (datasets/{id}) or --resume jobs/{id}")
    job = client.start_training(
        args.dataset, config, display_name=args.name, resume_job=args.resume
    )
    _print(job)
    return _watch_name(client, job.name) if args.watch else 0


def _jobs(client, args) -> int:
    if args.job:
        _print(client.cancel_job(args.job) if args.cancel else client.get_job(args.job))
        return 0
    from milsil.v1 import training_service_pb2

    for job in client.list_jobs(args.state):
        state = training_service_pb2.Job.State.Name(job.state)
        print(
            f"{job.name}\t{state}\tepoch {job.progress.epoch}/{job.progress.epochs}\t{job.model}\t{job.error}"
        )
    return 0


def _watch(client, args) -> int:
    return _watch_name(client, args.job)


def _watch_name(client, name: str) -> int:
    from milsil.v1 import training_service_pb2

    job = None
    for job in client.watch_job(name):
        p = job.progress
        state = training_service_pb2.Job.State.Name(job.state)
        print(
            f"{state:<11} epoch {p.epoch}/{p.epochs} step {p.step}/{p.steps_per_epoch} loss {p.loss:.4f} "
            f"SIL acc {p.sil_accuracy:.3f} MIL acc {p.mil_accuracy:.3f} val MIL acc {p.val_mil_accuracy:.3f} "
            f"ETA {p.eta_seconds:.0f}s",
            flush=True,
        )
    if job is not None and job.error:
        print(f"error: {job.error}", file=sys.stderr)
    ok = job is not None and job.state == training_service_pb2.Job.SUCCEEDED
    if ok:
        print(f"model: {job.model}")
    return 0 if ok else 1


def _models(client, args) -> int:
    if args.import_file:
        _print(client.import_model(args.import_file, model_id=args.id))
    elif args.model and args.delete:
        client.delete_model(args.model)
        print(f"deleted {args.model}")
    elif args.model and args.export:
        client.export_model(args.model, args.export)
        print(f"wrote {args.export}")
    elif args.model:
        _print(client.get_model(args.model))
    else:
        for model in client.list_models():
            print(
                f"{model.name}\t{model.arch}\t{model.head}\twidth {model.width}\t{','.join(model.class_names)}\t"
                f"{model.display_name}"
            )
    return 0
