"""Multi-process runs under ``torchrun``: process groups, sharding, and DDP training.

``torchrun`` (``python -m torch.distributed.run``) starts one process per GPU (or per
CPU worker) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`init_distributed` joins the group with NCCL on GPUs and Gloo on
CPUs, so the same code runs on a laptop (2 CPU processes), one GPU node or many nodes::

    # batch inference, slides sharded across 8 GPUs on one node
    torchrun --nproc_per_node=8 -m milsil.wsi.batch SLIDES_DIR --model best.pt --out OUT --device cuda
    # DDP training on 2 nodes x 4 GPUs (run on each node, --node_rank 0 and 1)
    torchrun --nnodes=2 --nproc_per_node=4 --node_rank=0 --master_addr=HOST --master_port=29500 \
        -m milsil.engine.distributed DATA --out RUN --device cuda
    # the same on a CPU machine, 2 processes, Gloo
    torchrun --nproc_per_node=2 -m milsil.engine.distributed DATA --out RUN --device cpu

Without ``torchrun`` (``WORLD_SIZE`` unset) everything runs as one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from milsil.errors import MilsilError

T = TypeVar("T")
_RESUMABLE = ("epochs", "device", "num_workers")


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


# --------------------------------------------------------------------------- DDP training


def _rank_batches(batches: list[list[int]], ctx: DistContext) -> list[list[int]]:
    """This rank's batches; the list is padded by repeating batches so every rank takes the
    same number of steps (DDP's all-reduce needs every rank at every step)."""
    if not ctx.active or not batches:
        return batches
    n = -(-len(batches) // ctx.world_size) * ctx.world_size
    padded = (batches * (n // len(batches) + 1))[:n]
    return padded[ctx.rank :: ctx.world_size]


def ddp_train(
    config: Any,
    train_records: Sequence[Any],
    class_names: Sequence[str],
    out_dir: str | Path,
    ctx: DistContext | None = None,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Data-parallel training with the paper's recipe; returns the path of ``last.pt``.

    Every rank builds the same model (same seed); each step, each rank takes its own batch
    of the epoch's shuffled batch list and DDP averages the gradients, so one step of N
    ranks is one step on N batches. Rank 0 writes ``last.pt`` (with the optimizer and
    scheduler, so a rerun resumes at the next epoch) and ``run.json``.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    from milsil.data import BagDataset, bucket_batches, collate_bags
    from milsil.engine.loop import bag_loss, data_summary, seed_everything, versions
    from milsil.models import create_model, read_checkpoint, save_checkpoint

    ctx = ctx or init_distributed(config.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    say = (log if ctx.is_main and log else None) or (lambda _m: None)
    seed_everything(config.seed)
    model = create_model(
        config.arch,
        num_classes=len(class_names),
        head=config.head,
        width=config.width,
        class_names=list(class_names),
        pretrained=config.pretrained,
    ).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    start_epoch = 0
    if last.is_file():
        payload = read_checkpoint(last)
        state = payload.get("training_state") or {}
        old, new = dict(state.get("config") or {}), config.to_dict()
        changed = [
            k for k in set(old) | set(new) if k not in _RESUMABLE and old.get(k) != new.get(k)
        ]
        if changed:
            raise MilsilError(
                f"{out} holds a run with other settings ({', '.join(sorted(changed))}); use another --out"
            )
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
    head = model.head
    ddp = (
        DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if ctx.active
        else model
    )
    mean, std = model.normalization
    dataset = BagDataset(
        train_records, config.patch_size, mean, std, augment=config.augment, seed=config.seed
    )
    history = []
    say(
        f"DDP training: {ctx.world_size} process(es), backend {ctx.backend or 'none'}, epochs {start_epoch + 1}..{config.epochs}"
    )
    for epoch in range(start_epoch, config.epochs):
        t0 = time.monotonic()
        dataset.set_epoch(epoch)
        batches = bucket_batches(
            dataset.bag_sizes, config.batch_size, True, config.seed * 1000 + epoch
        )
        ddp.train()
        total, steps = 0.0, 0
        for batch in _rank_batches(batches, ctx):
            bags, labels = collate_bags([dataset[i] for i in batch])
            output = ddp(bags.to(ctx.device))
            loss, _ = bag_loss(output, labels.to(ctx.device), head)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        scheduler.step()
        losses = gather(total / max(steps, 1), ctx)
        row = {
            "epoch": epoch + 1,
            "train_loss": sum(losses) / len(losses),
            "seconds": time.monotonic() - t0,
        }
        history.append(row)
        if ctx.is_main:
            save_checkpoint(
                model,
                last,
                provenance={
                    "trainer": "milsil.engine.distributed",
                    "config": config.to_dict(),
                    "epoch": epoch + 1,
                    "world_size": ctx.world_size,
                    "versions": versions(),
                },
                training_state={
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "config": config.to_dict(),
                },
            )
            say(
                f"  epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f} ({row['seconds']:.1f}s)"
            )
        barrier(ctx)
    if ctx.is_main:
        info = {
            "config": config.to_dict(),
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "data": data_summary(train_records, class_names),
            "history": history,
            "versions": versions(),
        }
        tmp = out / "run.json.tmp"
        tmp.write_text(json.dumps(info, indent=1, default=str))
        tmp.replace(out / "run.json")
    barrier(ctx)
    return last


def _cmd_train_ddp(args: argparse.Namespace) -> int:
    from milsil.data import load_dataset
    from milsil.engine.loop import config_from_args

    config = config_from_args(args)
    ctx = init_distributed(config.device)
    try:
        records, names = load_dataset(args.data)
        path = ddp_train(config, records, names, args.out, ctx)
        if ctx.is_main:
            print(f"checkpoint: {path}")
    finally:
        finish(ctx)
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``milsil train-ddp``."""
    from milsil.engine.loop import add_train_arguments

    p = subparsers.add_parser(
        "train-ddp",
        help="data-parallel training under torchrun (multi-GPU, multi-node, or CPU/Gloo)",
        description=(
            "Train like 'milsil train', data-parallel across the processes torchrun starts "
            "(NCCL on GPUs, Gloo on CPUs): torchrun --nproc_per_node=N -m milsil.engine.distributed "
            "DATA --out RUN. Rank 0 writes RUN/last.pt and RUN/run.json; reruns resume."
        ),
    )
    p.add_argument("data", help="dataset: manifest CSV or folder")
    p.add_argument("--out", required=True, help="run folder")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train_ddp)


def standalone(register: Callable[[Any], None], argv: list[str] | None) -> int:
    """Run one module's command without the full CLI (``python -m milsil.engine.distributed``)."""
    parser = argparse.ArgumentParser(prog="milsil")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    command = sub.choices and next(iter(sub.choices))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except MilsilError as exc:
        print(f"milsil {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(standalone(register_cli, None))
