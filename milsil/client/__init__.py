"""The Python gRPC client of the milsil server, and the ``milsil client`` commands.

This is the only place in :mod:`milsil` that speaks gRPC. Importing it never imports
torch: a workstation that only talks to a GPU server needs grpcio, protobuf and numpy.
"""

from milsil.client.grpc_client import MilsilClient
from milsil.client.messages import (
    Familiarity,
    HeatmapResult,
    assemble_heatmap,
    encode_tile,
    image_tiles,
)
from milsil.client.training import bags_from_dataset

__all__ = [
    "Familiarity",
    "HeatmapResult",
    "MilsilClient",
    "assemble_heatmap",
    "bags_from_dataset",
    "encode_tile",
    "image_tiles",
]
