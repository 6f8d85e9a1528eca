"""Watching the dense heatmap network's passes in tests (which device, which flags, how many
at once) without changing what they compute."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from milsil.inference import heatmap


def watch_dense_passes(monkeypatch, around: Callable[[Any, Callable[[], Any]], Any]) -> None:
    """Every pass of every dense network built from now on runs as ``around(x, run)``:
    ``x`` the input, ``run()`` the real pass (its result is the pass's result). The
    network's other attributes stay reachable, as the heatmap code reads them."""
    build = heatmap.dense_net

    def dense_net(*args, **kwargs):
        net = build(*args, **kwargs)

        class Watched:
            def __call__(self, x, *pass_args, **pass_kwargs):
                return around(x, lambda: net(x, *pass_args, **pass_kwargs))

            def __getattr__(self, name):
                return getattr(net, name)

        return Watched()

    monkeypatch.setattr(heatmap, "dense_net", dense_net)
