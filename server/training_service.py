"""milsil.v1.TrainingService: upload datasets, run training jobs (:mod:`milsil_server.jobs`)."""

from __future__ import annotations

from collections.abc import Iterator

from milsil.errors import MilsilError
from milsil.v1 import training_service_pb2, training_service_pb2_grpc
from milsil_server import convert
from milsil_server.inference import Limits
from milsil_server.jobs import JobManager
from milsil_server.store import Store, parse_name, parse_page


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: Store, jobs: JobManager, limits: Limits) -> None:
        self.store, self.jobs, self.limits = store, jobs, limits

    def UploadDataset(self, request_iterator, context):
        upload = convert.BagUpload(request_iterator, self.limits, context.is_active)
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
        return convert.dataset_message(row, existed)

    def StartTraining(self, request, context):
        if request.resume_job:
            job = self.jobs.resume(parse_name(request.resume_job, "jobs", "resume_job"))
        else:
            dataset_id = parse_name(request.dataset, "datasets", "dataset")
            config = convert.training_config(request.config)
            job = self.jobs.start(dataset_id, config, request.display_name)
        return convert.job_message(job)

    def GetJob(self, request, context):
        return convert.job_message(self.store.get_job(parse_name(request.name, "jobs")))

    def ListJobs(self, request, context):
        limit, offset = parse_page(request.page_size, request.page_token)
        state = convert.job_state(request.state)
        rows, more = self.store.list_jobs(limit, offset, state)
        return training_service_pb2.ListJobsResponse(
            jobs=[convert.job_message(r) for r in rows],
            next_page_token=convert.page_token(offset, limit, more),
        )

    def CancelJob(self, request, context):
        return convert.job_message(self.jobs.cancel(parse_name(request.name, "jobs")))

    def WatchJob(self, request, context) -> Iterator[training_service_pb2.WatchJobResponse]:
        ident = parse_name(request.name, "jobs")
        for row in self.jobs.watch(ident, context.is_active):
            yield training_service_pb2.WatchJobResponse(job=convert.job_message(row))
