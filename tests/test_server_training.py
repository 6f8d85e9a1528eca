"""TrainingService over a real channel: upload (deduplicated), jobs in a spawned process,
watch, cancel, restart with a running job in the store (INTERRUPTED, then resumed)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from server_support import running_server, tiny_bags

from milsil.client import MilsilClient, encode_tile
from milsil.v1 import training_service_pb2
from milsil_server.jobs import effective_config

FAST = {"arch": "bagnet9", "width": 8, "epochs": 1, "batch_size": 4, "learning_rate": 1e-3}


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _state(job) -> str:
    return training_service_pb2.Job.State.Name(job.state)


def test_upload_train_watch_cancel(tmp_path):
    with running_server(tmp_path) as server:
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=120)
        bags = tiny_bags()
        ds = client.upload_dataset(bags, display_name="tiny", max_message_bytes=5000)
        assert ds.name.startswith("datasets/ds-") and not ds.already_existed
        assert ds.bag_count == 8 and ds.tile_count == 32 and ds.patient_count == 4
        assert list(ds.class_names) == ["benign", "malignant"]
        again = client.upload_dataset(
            reversed(bags), encoding="png"
        )  # same content, other order/encoding
        assert again.already_existed and again.name == ds.name
        assert len(list((server.store.root / "datasets").iterdir())) == 1

        # Bad uploads.
        code, details = _code(lambda: client.upload_dataset([b for b in bags if b[1] == "benign"]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "2 classes" in details
        bad = training_service_pb2.Bag(
            label="benign", patient_id="p", tiles=[encode_tile(np.zeros((8, 8, 3), np.uint8))]
        )
        bad.tiles[0].data = b"xx"
        code, details = _code(
            lambda: client.training.UploadDataset(
                iter([training_service_pb2.UploadDatasetRequest(bags=[bad])])
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "bytes" in details
        code, details = _code(lambda: client.upload_dataset([(bags[0][0], "", "p")]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "label" in details
        assert not list((server.store.root / "tmp").iterdir())

        # Bad training requests.
        code, details = _code(lambda: client.start_training(ds.name, {**FAST, "arch": "vgg"}))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "bagnet9" in details
        code, details = _code(
            lambda: client.start_training(ds.name, {**FAST, "folds": 3, "fold": 5})
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "fold" in details
        code, _ = _code(lambda: client.start_training("datasets/ds-nope", FAST))
        assert code == grpc.StatusCode.NOT_FOUND
        code, _ = _code(lambda: client.start_training(resume_job="jobs/job-nope"))
        assert code == grpc.StatusCode.NOT_FOUND

        # A real (tiny) job: returned at once, watched to the end, registers its model.
        job = client.start_training(ds.name, FAST, display_name="first")
        assert _state(job) == "QUEUED" and job.config.width == 8 and job.config.patch_size == 32
        states = [_state(j) for j in client.watch_job(job.name)]
        assert states[-1] == "SUCCEEDED", client.get_job(job.name).error
        assert "RUNNING" in states
        done = client.get_job(job.name)
        assert (
            done.model == f"models/{done.job_id}"
            and done.progress.epoch == 1
            and done.end_time.seconds
        )
        model = client.get_model(done.model)
        assert model.source_job == job.name and model.patch_size == 32
        image = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
        assert client.heatmap(done.model, image, stride=4).logits.shape == (2, 5, 5)
        code, _ = _code(lambda: client.start_training(resume_job=job.name))
        assert code == grpc.StatusCode.FAILED_PRECONDITION

        # Cancel a long job while it runs; it checkpoints and ends CANCELLED; then it resumes.
        long = client.start_training(ds.name, {**FAST, "epochs": 500}, display_name="long")
        for j in client.watch_job(long.name):
            if _state(j) == "RUNNING" and j.progress.step > 0:
                break
        cancelled = client.cancel_job(long.name)
        assert _state(cancelled) in ("RUNNING", "CANCELLED")
        final = client.wait_job(long.name)
        assert _state(final) == "CANCELLED"
        assert (server.store.job_dir(final.job_id) / "last.pt").is_file()
        resumed = client.start_training(resume_job=long.name)
        assert _state(resumed) == "QUEUED" and resumed.attempts == 2
        client.cancel_job(long.name)
        assert _state(client.wait_job(long.name)) == "CANCELLED"

        jobs = client.list_jobs()
        assert [j.name for j in jobs] == [long.name, job.name]
        assert [j.name for j in client.list_jobs("SUCCEEDED")] == [job.name]
        assert _code(lambda: client.get_job("jobs/nope"))[0] == grpc.StatusCode.NOT_FOUND
        client.close()


def test_restart_marks_running_job_interrupted_and_resumes(tmp_path):
    with running_server(tmp_path) as server:
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=120)
        ds = client.upload_dataset(tiny_bags(seed=1))
        client.close()
        dataset = server.store.get_dataset(ds.dataset_id)
        # A job the previous server was running when it died.
        server.store.put_job(
            {
                "id": "job-crashed",
                "display_name": "crashed",
                "state": "RUNNING",
                "dataset_id": ds.dataset_id,
                "config": effective_config(dict(FAST), dataset),
                "progress": {"epoch": 1, "step": 1},
                "model_id": "",
                "error": "",
                "create_time": time.time(),
                "end_time": None,
                "attempts": 1,
            }
        )
    with running_server(tmp_path) as server:
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=120)
        job = client.get_job("jobs/job-crashed")
        assert _state(job) == "INTERRUPTED" and "resume" in job.error
        resumed = client.start_training(resume_job=job.name)
        assert _state(resumed) == "QUEUED"
        final = client.wait_job(job.name)
        assert _state(final) == "SUCCEEDED", final.error
        assert client.get_model(final.model).source_job == job.name
        client.close()


def test_cancel_while_a_job_leaves_the_queue_stays_cancelled(tmp_path, monkeypatch):
    """CancelJob racing the scheduler (job popped from the queue, process not yet started)
    must win: the job ends CANCELLED and never runs."""
    from milsil_server.store import Store

    real_get_dataset = Store.get_dataset

    def slow_get_dataset(self, ident):  # the scheduler's step between queue and process
        time.sleep(1.0)
        return real_get_dataset(self, ident)

    with running_server(tmp_path) as server:
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
        ds = client.upload_dataset(tiny_bags())
        monkeypatch.setattr(Store, "get_dataset", slow_get_dataset)
        job = client.start_training(ds.name, FAST)
        time.sleep(0.3)  # the scheduler has taken it off the queue and is preparing it
        assert _state(client.cancel_job(job.name)) == "CANCELLED"
        time.sleep(2.0)
        final = client.get_job(job.name)
        assert _state(final) == "CANCELLED" and not final.model


def test_start_training_takes_the_library_defaults_and_checks_pretrained(tmp_path, monkeypatch):
    """Zero fields mean what `milsil train` does with no flags (the library's recipe, not
    server constants); `pretrained` is '', 'none' or 'imagenet', and an offline server
    says FAILED_PRECONDITION for 'imagenet' with the way out, before queueing anything."""
    import socket

    from milsil.models import pretrained as pt

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with socket.socket() as s:  # a port nobody listens on: the server is "offline"
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv(pt.MIRROR_ENV, dead)
    with running_server(tmp_path / "server") as server:
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
        ds = client.upload_dataset(tiny_bags())
        job = client.start_training(ds.name, {"epochs": 1})
        client.cancel_job(job.name)
        c = job.config
        assert (c.arch, c.head, c.epochs, c.batch_size) == ("bagnet9", "milsil", 1, 8)
        assert (c.width, c.learning_rate, c.lr_decay) == (16, 2e-3, 0.8)
        assert (c.pretrained, c.recipe) == ("none", "default")
        paper = client.start_training(
            ds.name, {"epochs": 1, "recipe": "paper", "pretrained": "none"}
        )
        client.cancel_job(paper.name)
        assert (paper.config.width, paper.config.learning_rate) == (64, 1e-4)
        code, details = _code(lambda: client.start_training(ds.name, {"pretrained": "imagenet"}))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert f"{dead}/models/" not in details and "bagnet8-34f4ccd2.pth.tar" in details
        assert "pretrained 'none'" in details and "\n" not in details
        code, details = _code(lambda: client.start_training(ds.name, {"pretrained": "/etc/x.pth"}))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not accepted" in details
        code, details = _code(
            lambda: client.start_training(ds.name, {"arch": "admil", "pretrained": "imagenet"})
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "no published ImageNet" in details
        assert len(client.list_jobs()) == 2
        client.close()
