"""milsil.v1.TrainingService: upload datasets, run training jobs (:mod:`.jobs`).

Uploaded bags are read here (:class:`BagUpload`, a bag may continue over messages), and
dataset and job rows become messages (:func:`dataset_message`, :func:`job_message`);
the message fields are read from the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from milsil.errors import MilsilError
from milsil.v1 import training_service_pb2, training_service_pb2_grpc

from .errors import Cancelled, ResourceExhausted
from .jobs import JobManager
from .messages import decode, page_token, timestamp
from .resources import Limits
from .store import Store, parse_name, parse_page

JOB_STATES_ALLOWED = ", ".join(
    name
    for name in training_service_pb2.Job.State.keys()
    if training_service_pb2.Job.State.Value(name) != training_service_pb2.Job.STATE_UNSPECIFIED
)


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: Store, jobs: JobManager, limits: Limits) -> None:
        self.store, self.jobs, self.limits = store, jobs, limits

    def UploadDataset(self, request_iterator, context):
        upload = BagUpload(request_iterator, self.limits, context.is_active)
        writer = self.store.dataset_writer()
        try:
            for bag in upload:
                try:
                    writer.add_bag(bag.label, bag.patient, bag.tiles)
                except MilsilError as exc:
                    raise MilsilError(f"{bag.where}: {exc}") from None
            row, existed = self.store.commit_dataset(writer, upload.display_name)
        except BaseException:
            self.store.discard(writer)
            raise
        return dataset_message(row, existed)

    def StartTraining(self, request, context):
        if request.resume_job:
            job = self.jobs.resume(parse_name(request.resume_job, "jobs", "resume_job"))
        else:
            dataset_id = parse_name(request.dataset, "datasets", "dataset")
            config = training_config(request.config)
            job = self.jobs.start(dataset_id, config, request.display_name)
        return job_message(job)

    def GetJob(self, request, context):
        return job_message(self.store.get_job(parse_name(request.name, "jobs")))

    def ListJobs(self, request, context):
        limit, offset = parse_page(request.page_size, request.page_token)
        state = job_state(request.state)
        rows, more = self.store.list_jobs(limit, offset, state)
        return training_service_pb2.ListJobsResponse(
            jobs=[job_message(r) for r in rows],
            next_page_token=page_token(offset, limit, more),
        )

    def CancelJob(self, request, context):
        return job_message(self.jobs.cancel(parse_name(request.name, "jobs")))

    def WatchJob(self, request, context) -> Iterator[training_service_pb2.WatchJobResponse]:
        ident = parse_name(request.name, "jobs")
        for row in self.jobs.watch(ident, context.is_active):
            yield training_service_pb2.WatchJobResponse(job=job_message(row))


# ------------------------------------------------------------------ messages <-> values

# The message fields, read from the contract (the store keeps them by these names).
CONFIG_FIELDS = tuple(f.name for f in training_service_pb2.TrainingConfig.DESCRIPTOR.fields)
_PROGRESS_FIELDS = tuple(f.name for f in training_service_pb2.TrainingProgress.DESCRIPTOR.fields)


def training_config(config: training_service_pb2.TrainingConfig) -> dict[str, Any]:
    """The request's settings as :func:`milsil_server.jobs.effective_config` takes them."""
    return {k: getattr(config, k) for k in CONFIG_FIELDS}


def job_state(state: int) -> str | None:
    """A ListJobs state filter as the store's state name (None: all states)."""
    try:
        return training_service_pb2.Job.State.Name(state) if state else None
    except ValueError:
        raise MilsilError(f"state {state} is unknown; allowed: {JOB_STATES_ALLOWED}") from None


def dataset_message(
    row: dict[str, Any], already_existed: bool = False
) -> training_service_pb2.Dataset:
    return training_service_pb2.Dataset(
        name=f"datasets/{row['id']}",
        dataset_id=row["id"],
        display_name=row.get("display_name", ""),
        class_names=row["class_names"],
        bag_count=row["bag_count"],
        tile_count=row["tile_count"],
        patient_count=row["patient_count"],
        size_bytes=row["size_bytes"],
        already_existed=already_existed,
        create_time=timestamp(row["create_time"]),
    )


def job_message(row: dict[str, Any]) -> training_service_pb2.Job:
    cfg = row.get("config", {})
    progress = row.get("progress") or {}
    job = training_service_pb2.Job(
        name=f"jobs/{row['id']}",
        job_id=row["id"],
        display_name=row.get("display_name", ""),
        state=training_service_pb2.Job.State.Value(row["state"]),
        dataset=f"datasets/{row['dataset_id']}",
        config=training_service_pb2.TrainingConfig(
            **{k: cfg[k] for k in CONFIG_FIELDS if k in cfg}
        ),
        progress=training_service_pb2.TrainingProgress(
            **{
                k: progress[k]
                for k in _PROGRESS_FIELDS
                if isinstance(progress.get(k), (int, float))
            }
        ),
        model=f"models/{row['model_id']}" if row.get("model_id") else "",
        error=row.get("error", ""),
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row.get("update_time")),
        attempts=row.get("attempts", 1),
    )
    if row.get("end_time"):
        job.end_time.CopyFrom(timestamp(row["end_time"]))
    return job


@dataclass
class UploadedBag:
    label: str
    patient: str
    tiles: np.ndarray  # [N, H, W, 3] uint8
    where: str  # the bag in messages, e.g. "bags[0] of message 2"


class BagUpload:
    """UploadDatasetRequest messages -> whole bags (a bag may continue over messages).

    Iterate for the bags, each yielded as soon as the next one starts; ``display_name``
    is the first message's.
    """

    def __init__(
        self, requests: Iterable[Any], limits: Limits, is_active: Callable[[], bool]
    ) -> None:
        self.requests, self.limits, self.is_active = requests, limits, is_active
        self.display_name = ""

    def __iter__(self) -> Iterator[UploadedBag]:
        pending: dict[str, Any] | None = None
        for n, request in enumerate(self.requests):
            if n == 0:
                self.display_name = request.display_name
            for b, bag in enumerate(request.bags):
                where = f"bags[{b}] of message {n}"
                if pending is not None and (not bag.bag_id or bag.bag_id != pending["id"]):
                    yield _whole_bag(pending)
                    pending = None
                if pending is not None:  # a continuation of the same bag
                    for field, value in (("label", bag.label), ("patient", bag.patient_id)):
                        if value and value != pending[field]:
                            raise MilsilError(
                                f"{where}: bag_id {bag.bag_id!r} continues the previous bag "
                                f"but has {field} {value!r}, not {pending[field]!r}; give "
                                "every bag its own bag_id"
                            )
                if pending is None:
                    pending = {
                        "id": bag.bag_id,
                        "label": bag.label,
                        "patient": bag.patient_id,
                        "tiles": [],
                        "where": where,
                    }
                for t, tile in enumerate(bag.tiles):
                    if len(pending["tiles"]) >= self.limits.max_bag_tiles:
                        raise ResourceExhausted(
                            f"{where}: a bag may have at most {self.limits.max_bag_tiles} tiles"
                        )
                    pending["tiles"].append(decode(tile, f"{where}.tiles[{t}]", self.limits))
            if not self.is_active():
                raise Cancelled("upload cancelled by the client")
        if pending is not None:
            yield _whole_bag(pending)


def _whole_bag(pending: dict[str, Any]) -> UploadedBag:
    tiles = pending["tiles"]
    if not tiles:
        raise MilsilError(f"{pending['where']} has no tiles")
    shape = tiles[0].shape
    for i, t in enumerate(tiles):
        if t.shape != shape:
            raise MilsilError(
                f"{pending['where']}.tiles[{i}] is {t.shape[1]}x{t.shape[0]} but the bag's first tile is "
                f"{shape[1]}x{shape[0]}: all tiles of a bag must have the same size"
            )
    return UploadedBag(pending["label"], pending["patient"], np.stack(tiles), pending["where"])
