"""Server hardening (issue 11), over real processes and real channels.

* a trainer dies with its server (kill -9), and a job folder has one trainer at a time;
* ImportModel checks a checkpoint's config and tensor shapes before allocating the model;
* health answers SERVING while the services are saturated;
* over-long and unusable paths are INVALID_ARGUMENT naming the field, never INTERNAL;
* messages name resources and fields, never the server's folders;
* the data dir and everything in it are owner-only under umask 022;
* numbers print compactly; class names are trimmed and may not differ only by case.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import (
    register_tiny_model,
    reset_peak_rss,
    rss_bytes,
    running_server,
    serve_process,
    stop_process,
    tiny_bags,
    tiny_model,
)

from milsil.client import MilsilClient
from milsil.models.mil import IMAGENET_MEAN, IMAGENET_STD
from milsil.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    training_service_pb2,
    training_service_pb2_grpc,
)
from milsil_server.trainer import LOCK_NAME, lock_holder

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAST = {"arch": "bagnet9", "width": 4, "batch_size": 4, "learning_rate": 1e-3}


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _state(job) -> str:
    return training_service_pb2.Job.State.Name(job.state)


def _checkpoint(path: Path, config: dict, width: int = 4) -> Path:
    """A milsil checkpoint whose config says ``config`` but whose tensors are a width-4
    two-class BagNet-9's (a small file claiming a big model)."""
    state = tiny_model(width=width).state_dict()
    payload = {
        "format": "milsil-checkpoint",
        "version": 1,
        "config": {
            "arch": "bagnet9",
            "num_classes": 2,
            "head": "milsil",
            "width": width,
            "class_names": [],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            **config,
        },
        "state_dict": state,
        "provenance": {},
    }
    torch.save(payload, path)
    return path


def _import(stub, path: Path, model_id: str = ""):
    data = path.read_bytes()
    return stub.ImportModel(
        iter([model_service_pb2.ImportModelRequest(model_id=model_id, chunk_data=data)]),
        timeout=60,
    )


# --------------------------------------------------------------------------- ImportModel


# Peak RSS the server may gain while refusing a checkpoint that claims a huge model. The
# model it describes would take 200-800 MB (a 100,000 x 512 classifier alone is 205 MB);
# reading the small file and checking it on the meta device takes a few MB.
IMPORT_RSS_BOUND = 40 * 2**20


def test_import_refuses_a_huge_config_before_allocating(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    huge_classes = _checkpoint(files / "classes.pt", {"num_classes": 100_000, "width": 64})
    # Within the config bounds, but the tensors do not match: the meta-device check.
    mismatched = _checkpoint(files / "shapes.pt", {"num_classes": 5_000, "width": 256})
    # 1e308 as the width: refused, and printed compactly.
    wide = _checkpoint(files / "wide.pt", {"width": 1e308})
    proc, target = serve_process(tmp_path / "data")
    try:
        with grpc.insecure_channel(target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            # Warm up: the first model built pays for torch's lazy start (about 150 MB,
            # whatever the model's size), as any server that has served once has.
            _import(stub, _checkpoint(files / "ok.pt", {}), "warm")
            stub.DeleteModel(model_service_pb2.DeleteModelRequest(name="models/warm"))
            for path, words in (
                (huge_classes, ("num_classes", "10000", "100000")),
                (mismatched, ("mis-shaped", "width 256", "5000 classes")),
            ):
                reset_peak_rss(proc.pid)
                before = rss_bytes(proc.pid)
                code, details = _code(lambda path=path: _import(stub, path))
                grown = rss_bytes(proc.pid, "VmHWM") - before
                print(f"{path.name}: peak RSS +{grown / 2**20:.1f} MiB; {details}")
                assert code == INVALID, details
                assert all(w in details for w in words), details
                assert "chunk_data" in details and str(tmp_path) not in details
                assert grown < IMPORT_RSS_BOUND, f"{path.name}: peak RSS grew {grown} bytes"
            code, details = _code(lambda: _import(stub, wide))
            assert code == INVALID and "1e+308" in details and len(details) < 300, details
            assert stub.ListModels(model_service_pb2.ListModelsRequest()).models == []
    finally:
        stop_process(proc)


# --------------------------------------------------------------------------- health under load


def test_health_answers_while_the_services_are_saturated(tmp_path):
    """4 calls may run at once; 12 held upload streams saturate them. Health (Check and
    Watch) and reflection keep answering; the calls over the bound are refused at once as
    busy and counted by reason."""
    import socket
    import urllib.request

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics_port = sock.getsockname()[1]
    release = threading.Event()

    def held_upload():
        yield training_service_pb2.UploadDatasetRequest(display_name="held")
        release.wait(30)

    with running_server(tmp_path, max_workers=4, metrics_port=metrics_port) as server:
        target = f"127.0.0.1:{server.port}"
        with grpc.insecure_channel(target) as load, grpc.insecure_channel(target) as probe:
            uploads = training_service_pb2_grpc.TrainingServiceStub(load).UploadDataset
            calls = [uploads.future(held_upload(), timeout=60) for _ in range(12)]
            try:
                deadline = time.monotonic() + 20
                while sum(c.done() for c in calls) < 8 and time.monotonic() < deadline:
                    time.sleep(0.05)
                refused = [c for c in calls if c.done()]
                assert len(refused) == 8 and server.state.active["rpc"] == 4
                for call in refused:
                    assert call.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "busy" in call.exception().details()
                    assert ("milsil-retry", "busy") in call.trailing_metadata()

                health = health_pb2_grpc.HealthStub(probe)
                answers = []
                for _ in range(60):
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    answers.append(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
                    time.sleep(0.01)
                assert answers == ["SERVING"] * 60
                watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()
                reflection = reflection_pb2_grpc.ServerReflectionStub(probe)
                listed = next(
                    reflection.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                        timeout=5,
                    )
                )
                names = {s.name for s in listed.list_services_response.service}
                assert "grpc.health.v1.Health" in names
                assert "milsil.v1.TrainingService" in names
            finally:
                release.set()
            for call in calls:  # the held uploads end (with no bags: INVALID_ARGUMENT)
                if call not in refused:
                    assert call.exception(timeout=30).code() == INVALID
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
                .read()
                .decode()
            )
            assert 'milsil_rejected_total{reason="too_many_calls"} 8.0' in text
            assert "milsil_jobs_running 0.0" in text and "milsil_jobs_queued 0.0" in text


# --------------------------------------------------------------------------- paths and messages


@pytest.fixture(scope="module")
def slide_server(tmp_path_factory):
    from milsil.wsi.synthetic import synthetic_slide

    base = tmp_path_factory.mktemp("paths")
    root = base / "slides"
    root.mkdir()
    slide, _ = synthetic_slide(root / "a.tif", 128, 96, block=32, seed=1)
    long_name = root / ("s" * 240 + ".tif")  # valid, but its default TIFF name is not
    long_name.write_bytes(slide.read_bytes())
    with running_server(base / "data", slide_roots=(root,)) as server:
        register_tiny_model(server, "tiny")
        (server.store.root / "outputs").mkdir(exist_ok=True)
        (server.store.root / "outputs" / "f.tif").write_bytes(b"a file, not a folder")
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield {
                "server": server,
                "base": base,
                "root": root,
                "long": long_name.name,
                "stub": inference_service_pb2_grpc.InferenceServiceStub(channel),
                "channel": channel,
            }


def _annotate_slide(stub, **config):
    request = inference_service_pb2.AnnotateSlideRequest(
        config=inference_service_pb2.SlideConfig(
            model="models/tiny", stride=8, tile_size=64, **config
        )
    )
    return list(stub.AnnotateSlide(request, timeout=60))


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({"path": "a" * 300 + ".tif"}, "config.path", "at most 255 bytes per name"),
        ({"path": "d/" * 2100 + "a.tif"}, "config.path", "at most 4095 bytes"),
        ({"path": "a.tif", "tiff_path": "t" * 256 + ".tif"}, "config.tiff_path", "bytes"),
        ({"path": "a.tif", "tiff_path": "f.tif/x.tif"}, "config.tiff_path", "is a file"),
        ({"path": "a.tif", "tiff_path": "x/\x00.tif"}, "config.tiff_path", "NUL"),
        ("long-default", "config.tiff_path (default name)", "bytes"),
    ],
)
def test_bad_paths_are_invalid_argument_naming_the_field(slide_server, config, field, words):
    if config == "long-default":
        config = {"path": slide_server["long"], "write_tiff": True}
    code, details = _code(lambda: _annotate_slide(slide_server["stub"], **config))
    assert code == INVALID, details
    assert details.startswith(field) and words in details, details
    assert str(slide_server["base"]) not in details and len(details) < 400, details


def test_messages_name_resources_never_server_folders(slide_server):
    server, base = slide_server["server"], str(slide_server["base"])
    models = model_service_pb2_grpc.ModelServiceStub(slide_server["channel"])
    code, details = _code(
        lambda: models.ImportModel(
            iter([model_service_pb2.ImportModelRequest(chunk_data=b"PK\x03\x04 not a checkpoint")]),
            timeout=30,
        )
    )
    assert code == INVALID and "chunk_data" in details, details
    assert base not in details and "import-" not in details, details
    # A stored checkpoint damaged on disk: named by its resource name.
    register_tiny_model(server, "broken")
    path = server.store.model_path("broken")
    path.write_bytes(path.read_bytes()[:100])
    client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
    try:
        import numpy as np

        code, details = _code(
            lambda: client.heatmap("models/broken", np.zeros((16, 16, 3), np.uint8))
        )
    finally:
        client.close()
    assert code == INVALID and "models/broken" in details and base not in details, details
    # The catch-all: a server folder in any message is shown by what it is.
    message = f"cannot read {server.store.root}/slide-work/x and {slide_server['root']}/a.tif"
    assert (
        server.state.redact(message) == "cannot read <data-dir>/slide-work/x and <slide-root>/a.tif"
    )


# --------------------------------------------------------------------------- class names


def test_class_names_are_trimmed_and_may_not_differ_only_by_case(tmp_path):
    bags = tiny_bags(patients=2, bags_per_patient=2)
    with running_server(tmp_path) as server:
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
        relabeled = [
            (t, "tumor " if label == "malignant" else "  benign", p) for t, label, p in bags
        ]
        ds = client.upload_dataset(relabeled)
        assert list(ds.class_names) == ["benign", "tumor"]
        mixed = [(t, ["Tumor", "tumor", "tumor "][i % 3], p) for i, (t, _, p) in enumerate(bags)]
        code, details = _code(lambda: client.upload_dataset(mixed))
        assert code == INVALID and "'Tumor' and 'tumor' differ only by case" in details, details
        assert not list((server.store.root / "tmp").iterdir())
        client.close()


# --------------------------------------------------------------------------- file modes


def _loose_modes(data: Path) -> list[str]:
    """Everything under ``data`` (itself included) that its group or others may use."""
    loose = []
    for path in [data, *data.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose.append(f"{path.relative_to(data.parent)} {oct(mode)}")
    return loose


def test_data_dir_is_owner_only_under_umask_022(tmp_path):
    """Database (with WAL and SHM), datasets, models, slide work and TIFFs; the job
    folders are checked by the trainer test below, which trains under umask 022 too."""
    from milsil.models import save_checkpoint
    from milsil.wsi.synthetic import synthetic_slide

    root = tmp_path / "slides"
    root.mkdir()
    synthetic_slide(root / "a.tif", 128, 96, block=32, seed=1)
    checkpoint = save_checkpoint(tiny_model(width=4), tmp_path / "tiny.pt")
    data = tmp_path / "data"
    proc, target = serve_process(data, "--slide-root", str(root), umask=0o022)
    try:
        client = MilsilClient(target, timeout=120)
        client.upload_dataset(tiny_bags(patients=2, bags_per_patient=2))
        model = client.import_model(checkpoint, model_id="tiny")
        client.annotate_slide(model.name, "a.tif", tile_size=64, write_tiff=True)
        client.close()
        assert (data / "milsil.db-wal").exists() and (data / "milsil.db-shm").exists()
        assert list((data / "outputs").rglob("*.tif")) and (data / "models" / "tiny.pt").exists()
        assert list((data / "datasets").rglob("manifest.csv"))
        assert (data / "slide-work").is_dir()
        assert not _loose_modes(data), _loose_modes(data)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
    finally:
        stop_process(proc)


# --------------------------------------------------------------------------- trainers


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _epochs(log: Path) -> list[int]:
    """The epochs ``log.jsonl`` records, in order (a line still being written is skipped)."""
    if not log.exists():
        return []
    lines = log.read_text().split("\n")[:-1]  # complete lines only
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process facts")
def test_trainer_dies_with_its_server_and_a_job_folder_has_one_trainer(tmp_path):
    data = tmp_path / "data"
    epochs = 8
    proc, target = serve_process(data, umask=0o022)
    try:
        client = MilsilClient(target, timeout=120)
        ds = client.upload_dataset(tiny_bags(patients=2, bags_per_patient=2))
        job = client.start_training(ds.name, {**FAST, "epochs": epochs, "validation_fraction": 0.5})
        client.close()
        folder = data / "jobs" / job.name.split("/")[1]
        log = folder / "log.jsonl"
        deadline = time.monotonic() + 120
        while len(_epochs(log)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_epochs(log)) >= 2
        trainer = lock_holder(folder)  # the kernel's word: this process holds the folder
        assert trainer is not None and trainer in _children(proc.pid)
        children = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = time.monotonic()
        while any(_alive(p) for p in children) and time.monotonic() - killed_at < 5:
            time.sleep(0.05)
        survivors = [p for p in children if _alive(p)]
        assert not survivors, f"outlived the server: {survivors}"
        print(f"trainer gone {time.monotonic() - killed_at:.2f} s after kill -9")
        assert lock_holder(folder) is None
    finally:
        stop_process(proc)

    # A trainer of an older server still holding the folder (as if it had survived): the
    # restarted server ends it before the job is INTERRUPTED.
    stale = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(folder / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stale.stdout.readline().strip() == "held"
    assert lock_holder(folder) == stale.pid
    proc, target = serve_process(data, umask=0o022)
    try:
        assert stale.wait(timeout=1) == -signal.SIGTERM  # ended before the server listened
        client = MilsilClient(target, timeout=120)
        assert _state(client.get_job(job.name)) == "INTERRUPTED"
        resumed = client.start_training(resume_job=job.name)
        assert resumed.attempts == 2
        done = client.wait_job(job.name, timeout=180)
        client.close()
        assert _state(done) == "SUCCEEDED", done.error
        seen = _epochs(log)
        assert seen == list(range(1, epochs + 1)), seen  # strictly increasing, none twice
        assert (folder / "last.pt").exists() and not _loose_modes(data), _loose_modes(data)
    finally:
        stop_process(proc)
        if stale.poll() is None:
            stale.kill()
        stale.wait()
