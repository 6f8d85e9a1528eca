"""Multi-process runs under ``torchrun``: process groups, sharding, gathering.

``torchrun`` (``python -m torch.distributed.run``) starts one process per GPU (or per
CPU worker) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`init_distributed` joins the group with NCCL on GPUs and Gloo on
CPUs, so the same code runs on a laptop (2 CPU processes), one GPU node or many nodes::

    # batch inference, slides sharded across 8 GPUs on one node
    torchrun --nproc_per_node=8 -m milsil.cli.slides SLIDES_DIR --model best.pt --out OUT --device cuda
    # DDP training on 2 nodes x 4 GPUs (run on each node, --node_rank 0 and 1)
    torchrun --nnodes=2 --nproc_per_node=4 --node_rank=0 --master_addr=HOST --master_port=29500 \
        -m milsil.cli train-ddp DATA --out RUN --device cuda
    # the same on a CPU machine, 2 processes, Gloo
    torchrun --nproc_per_node=2 -m milsil.cli train-ddp DATA --out RUN --device cpu

Data-parallel training is the one training loop given a :class:`DistContext`
(``train_model(..., distributed=ctx)`` in :mod:`milsil.engine.loop`): it takes this rank's
batches (:meth:`DistContext.rank_batches`), wraps the model (:meth:`DistContext.wrap`),
gathers the epoch's metrics (:meth:`DistContext.gather`) and lets rank 0 write the files.
Folder batches (:mod:`milsil.wsi.batch`) :func:`shard` slides across ranks and
:func:`gather` their results. Both use this module, so it sits at the top of the package
beside :mod:`milsil.errors` (its only milsil import) rather than inside either of them.

Without ``torchrun`` (``WORLD_SIZE`` unset) everything runs as one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from milsil.errors import MilsilError

T = TypeVar("T")


@dataclass
class DistContext:
    """This process's place in the group and the device it should use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rank_batches(self, batches: list[list[int]]) -> list[list[int]]:
        """This rank's share of an epoch's batches (see :func:`_rank_batches`)."""
        return _rank_batches(batches, self)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged across ranks), or
        ``model`` itself without a group."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def gather(self, obj: Any) -> list[Any]:
        return gather(obj, self)

    def barrier(self) -> None:
        barrier(self)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise MilsilError(
            f"environment variable {name} must be an integer, got {value!r}"
        ) from None


def init_distributed(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group (if any) and pick this rank's device.

    ``device``: ``auto`` (a GPU per local rank when there are GPUs, else CPU), ``cpu``,
    ``cuda``. NCCL for GPUs, Gloo for CPUs.
    """
    import torch.distributed as dist

    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise MilsilError(f"device {device!r} asked for, but CUDA is not available here")
    if want_cuda:
        index = (
            local % torch.cuda.device_count()
            if device in ("auto", "cuda")
            else int(device.split(":")[1])
        )
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if want_cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
    return DistContext(rank, world, local, dev, backend)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Round-robin share of ``items`` for ``rank`` (every item in exactly one share)."""
    return list(items[rank::world_size])


def _rank_batches(batches: list[list[int]], ctx: DistContext) -> list[list[int]]:
    """This rank's batches; the list is padded by repeating batches so every rank takes the
    same number of steps (DDP's all-reduce needs every rank at every step)."""
    if not ctx.active or not batches:
        return batches
    n = -(-len(batches) // ctx.world_size) * ctx.world_size
    padded = (batches * (n // len(batches) + 1))[:n]
    return padded[ctx.rank :: ctx.world_size]


def gather(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (one element without a group)."""
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def finish(ctx: DistContext) -> None:
    """Leave the process group (safe to call without one)."""
    if ctx.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
