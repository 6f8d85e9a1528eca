"""The server's Prometheus metrics (``--metrics-port``), in a registry of their own.

Calls are counted by method and code, and by client (:mod:`.auth`: user, or host without
tokens) with bounded cardinality: the first ``CLIENT_LABELS`` clients have a label each,
later ones count as "other".
"""

from __future__ import annotations

from typing import Any

from milsil.errors import MilsilError

from .jobs import JobManager
from .memory import MemoryBudget
from .slots import ComputeSlots

CLIENT_LABELS = 32  # clients with a metrics label of their own; later ones are "other"


class Metrics:
    """Prometheus metrics in a registry of their own (several servers per process in tests)."""

    def __init__(self, host: str, port: int, devices: list[Any]) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise MilsilError(
                "--metrics-port needs the prometheus_client package (pip install prometheus_client)"
            ) from None
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter(
            "milsil_requests_total",
            "RPCs by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.errors = prom.Counter(
            "milsil_errors_total",
            "Failed RPCs by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = prom.Histogram(
            "milsil_request_seconds",
            "RPC latency",
            ["method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.in_flight = prom.Gauge(
            "milsil_requests_in_flight", "RPCs being served", ["method"], registry=self.registry
        )
        memory = prom.Gauge(
            "milsil_device_memory_bytes",
            "Device memory allocated by PyTorch, on all of the server's GPUs",
            registry=self.registry,
        )

        def allocated() -> float:
            import torch

            gpus = {d for d in devices if d.type == "cuda"}
            return float(sum(torch.cuda.memory_allocated(d) for d in gpus))

        memory.set_function(allocated)
        self.rejected = prom.Counter(
            "milsil_rejected_total",
            "Requests refused, by reason: busy, the client waits and retries (queue_full, "
            "displaced, too_many_calls, job_queue_full, memory_busy); final (too_large, out_of_memory, "
            "draining, unauthenticated)",
            ["reason"],
            registry=self.registry,
        )
        self.client_requests = prom.Counter(
            "milsil_client_requests_total",
            f"RPCs by client (user, or host without tokens; the first {CLIENT_LABELS} seen, "
            "then 'other') and status code",
            ["client", "code"],
            registry=self.registry,
        )
        self.client_seconds = prom.Counter(
            "milsil_client_request_seconds_total",
            "Seconds of RPCs by client (labelled as milsil_client_requests_total)",
            ["client"],
            registry=self.registry,
        )
        self._labelled: set[str] = set()
        self._prom = prom
        self.http, self.thread = prom.start_http_server(port, addr=host, registry=self.registry)
        self.port = self.http.server_port

    def by_client(self, client: str, code: str, seconds: float) -> None:
        """Count a call under its client's label: the first ``CLIENT_LABELS`` clients
        have one each, any later one counts as "other" (bounded cardinality)."""
        if client not in self._labelled and len(self._labelled) < CLIENT_LABELS:
            self._labelled.add(client)
        label = client if client in self._labelled else "other"
        self.client_requests.labels(label, code).inc()
        self.client_seconds.labels(label).inc(seconds)

    def watch_slots(self, slots: ComputeSlots) -> None:
        """Gauges of the compute queue: its length and the slots in use."""
        queue = self._prom.Gauge(
            "milsil_compute_queue_length",
            "Requests waiting for a compute slot",
            registry=self.registry,
        )
        queue.set_function(lambda: float(slots.waiting))
        in_use = self._prom.Gauge(
            "milsil_compute_slots_in_use",
            "Compute slots computing now",
            registry=self.registry,
        )
        in_use.set_function(lambda: float(slots.in_use))
        total = self._prom.Gauge(
            "milsil_compute_slots", "Compute slots configured", registry=self.registry
        )
        total.set(slots.slots)

    def watch_memory(self, memory: MemoryBudget) -> None:
        """Gauges of the region memory budget (--max-memory): bytes reserved and the limit."""
        in_use = self._prom.Gauge(
            "milsil_memory_budget_in_use_bytes",
            "Bytes Heatmap/Annotate calls hold (reserved before allocating)",
            registry=self.registry,
        )
        in_use.set_function(lambda: float(memory.in_use))
        limit = self._prom.Gauge(
            "milsil_memory_budget_bytes", "The region memory budget", registry=self.registry
        )
        limit.set(memory.limit)

    def watch_jobs(self, jobs: JobManager) -> None:
        """Gauges of the training jobs: running and queued."""
        for state, what in (("running", "running"), ("queued", "waiting to run")):
            gauge = self._prom.Gauge(
                f"milsil_jobs_{state}", f"Training jobs {what}", registry=self.registry
            )
            gauge.set_function(lambda state=state: float(jobs.counts()[state]))

    def stop(self) -> None:
        self.http.shutdown()
