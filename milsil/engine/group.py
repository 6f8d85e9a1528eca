"""The process group a training run sees: one process, or a ``torchrun`` group.

:func:`milsil.engine.loop.train_model` asks only what :class:`ProcessGroup` lists, which
:class:`milsil.distributed.DistContext` provides; a run without ``torchrun`` uses
:class:`OneProcess`, where every collective is trivial.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class ProcessGroup(Protocol):
    """What the loop needs of a process group (:class:`milsil.distributed.DistContext`)."""

    device: torch.device
    world_size: int
    backend: str | None

    @property
    def is_main(self) -> bool: ...

    @property
    def active(self) -> bool: ...

    def rank_batches(self, batches: list[list[int]]) -> list[list[int]]: ...

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def gather(self, obj: Any) -> list[Any]: ...

    def barrier(self) -> None: ...


class OneProcess:
    """The process group of a run without ``torchrun``: this process alone."""

    is_main = True
    active = False
    world_size = 1
    backend = None

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def rank_batches(self, batches: list[list[int]]) -> list[list[int]]:
        return batches

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass
