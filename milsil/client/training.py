"""Training messages: local bags as UploadDatasetRequest messages, the final job states.

The client's half of the server's :mod:`milsil_server.training_service`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from milsil.client.messages import encode_tile
from milsil.v1 import common_pb2, training_service_pb2

# Read from the contract, not copied: every Job.State numbered above RUNNING is final
# (documented in training_service.proto).
FINAL_JOB_STATES = tuple(
    name
    for name, number in training_service_pb2.Job.State.items()
    if number > training_service_pb2.Job.RUNNING
)


def bags_from_dataset(path: str | Path, patch_size: int) -> Iterator[tuple[np.ndarray, str, str]]:
    """``(tiles, label, patient)`` for every bag of a local dataset (manifest CSV or folder)."""
    from milsil.data import load_bag, load_dataset

    records, classes = load_dataset(path)
    for record in records:
        yield load_bag(record, patch_size), classes[record.label], record.patient


def upload_requests(
    bags: Iterable[tuple[np.ndarray, str, str]],
    display_name: str,
    encoding: str,
    max_message_bytes: int,
) -> Iterator[training_service_pb2.UploadDatasetRequest]:
    """The bags as messages of at most about ``max_message_bytes`` of tiles; a big bag is
    split across messages under one ``bag_id``."""
    first = True
    for n, (tiles, label, patient) in enumerate(bags):
        chunk: list[common_pb2.Tile] = []
        size = 0
        for tile in tiles:
            msg = encode_tile(np.asarray(tile), encoding)
            if chunk and size + len(msg.data) > max_message_bytes:
                yield _upload(first, display_name, n, label, patient, chunk)
                first, chunk, size = False, [], 0
            chunk.append(msg)
            size += len(msg.data)
        yield _upload(first, display_name, n, label, patient, chunk)
        first = False
    if first:
        yield training_service_pb2.UploadDatasetRequest(display_name=display_name)


def _upload(
    first: bool,
    display_name: str,
    n: int,
    label: str,
    patient: str,
    tiles: list[common_pb2.Tile],
) -> training_service_pb2.UploadDatasetRequest:
    return training_service_pb2.UploadDatasetRequest(
        display_name=display_name if first else "",
        bags=[
            training_service_pb2.Bag(
                bag_id=f"bag-{n}", label=label, patient_id=patient, tiles=tiles
            )
        ],
    )
