"""Assemble and run the server: servicers, interceptor, health, reflection, TLS, metrics.

``build_server(ServerConfig(port=0))`` returns a started :class:`MilsilServer` whose
``port`` is the bound port (port 0 picks a free one: what the tests use). ``drain()`` is
the SIGTERM path: health NOT_SERVING, new requests UNAVAILABLE, running jobs checkpoint,
in-flight requests get ``grace`` seconds to finish.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from milsil.errors import MilsilError
from milsil.inference.precision import check_mode
from milsil.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    training_service_pb2,
    training_service_pb2_grpc,
)
from milsil_server import auth
from milsil_server.errors import (
    RETRY_KEY,
    Busy,
    Cancelled,
    Unauthenticated,
    Unavailable,
    rejection,
    status_for,
)
from milsil_server.inbox import Inbox
from milsil_server.inference_service import InferenceServicer
from milsil_server.jobs import JobManager
from milsil_server.memory import MemoryBudget, default_max_memory
from milsil_server.metrics import Metrics
from milsil_server.model_service import ModelServicer
from milsil_server.paths import SlidePaths
from milsil_server.resources import Limits, ModelCache, Resources, parse_devices
from milsil_server.slots import ComputeSlots
from milsil_server.store import Store
from milsil_server.training_service import TrainingServicer

log = logging.getLogger("milsil.server")
access_log = logging.getLogger("milsil.server.access")

SERVICE_NAMES = (
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
)


# Health is never bounded or counted; reflection streams have a small bound of their own;
# the pool has this many threads beyond the services' bound, so health (and the refusals
# of calls over the bound) always find one.
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."
REFLECTION_CALLS = 2
RESERVED_THREADS = 4


def default_data_dir() -> Path:
    return Path.home() / ".milsil" / "server"


@dataclass
class ServerConfig:
    """Everything ``milsil serve`` can set; the defaults work with no configuration."""

    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = field(default_factory=default_data_dir)
    token: str | None = None
    # A file of 'NAME TOKEN' lines: per-user tokens, re-read when it changes.
    tokens_file: Path | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_message_mb: int = 64
    max_model_mb: int = 2048
    max_workers: int = 16
    max_concurrent_rpcs: int | None = None  # default: max_workers
    # Once the bound's places are taken, a client (user, or host without tokens) holding
    # fewer calls than this still gets one of as many spare places; default: half the bound.
    max_calls_per_client: int | None = None
    compute_slots: int = 1  # per device
    max_waiting: int = 8
    max_queued_jobs: int = 16
    metrics_port: int | None = None
    grace: float = 10.0
    # Longest silence between a streamed call's messages, seconds (0: no limit).
    stream_idle_timeout: float = 30.0
    # --devices: comma-separated, one compute slot each (None: every GPU, else the CPU).
    device: str | None = None
    precision: str = "exact"  # --tf32: "tf32", --bf16: "bf16" (milsil.inference.precision.MODES)
    limits: Limits = field(default_factory=Limits)
    # Folders whose slides AnnotateSlide/SlideHeatmap may read (none: those RPCs are off).
    slide_roots: tuple[Path, ...] = ()
    # Where AnnotateSlide/SlideHeatmap write TIFFs (default: <data_dir>/outputs).
    output_root: Path | None = None
    # Memory all Heatmap/Annotate calls may hold at once, MB (None: a quarter of the RAM).
    max_memory_mb: int | None = None


class _Interceptor(grpc.ServerInterceptor):
    """Auth, draining, exception -> status mapping, one access-log line and metrics per RPC."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if method.startswith(HEALTH_PREFIX) and handler.unary_stream:
            return handler  # Watch as grpc_health made it: non-blocking, holding no thread
        metadata = handler_call_details.invocation_metadata
        state = self.state
        # Health is never bounded (it answers under any load); reflection has a small bound
        # of its own; every other call counts against the services' bound.
        if method.startswith(HEALTH_PREFIX):
            bound = "health"
        elif method.startswith(REFLECTION_PREFIX):
            bound = "reflection"
        else:
            bound = "rpc"

        def admit(context) -> str:
            """The caller's identity, once it may be served."""
            host = auth.peer_host(context.peer())
            if auth.is_exempt(method):
                return host
            if state.draining:
                raise Unavailable("server is shutting down; retry on another instance or later")
            user = state.tokens.user(metadata)
            if user is None:
                raise Unauthenticated(
                    "missing or wrong bearer token (metadata 'authorization: Bearer <token>')"
                )
            return f"user:{user}" if user else host

        def finish(
            context,
            started: float,
            exc: BaseException | None,
            streaming: bool = False,
            client: str | None = None,
        ) -> None:
            code = grpc.StatusCode.OK
            message = ""
            if streaming and type(exc) is MilsilError and _client_gone(context):
                # A cancel ends the request stream a moment before gRPC marks the call
                # cancelled: what failed then (a short upload, a region not covered) is
                # the cancel, never an error of the request's. (Only a plain request
                # error waits to see; busy and the rest answer at once.)
                exc = Cancelled("the client cancelled the call while sending")
            if isinstance(exc, grpc.RpcError) and not context.is_active():
                # The request iterator raised because the client went away: its cancel
                # (or deadline), not a server fault.
                exc = Cancelled("the client cancelled the call while sending")
            if exc is not None:
                code, message = status_for(exc)
                message = state.redact(message)
                if code == grpc.StatusCode.INTERNAL:
                    log.error("%s failed unexpectedly", method, exc_info=exc)
                retry, reason = rejection(exc, code)
                if retry:  # busy (the client waits and retries) or never (too large)
                    context.set_trailing_metadata(((RETRY_KEY, retry),))
                state.reject(reason)
            elif not context.is_active():
                code = grpc.StatusCode.CANCELLED
            if code == grpc.StatusCode.CANCELLED:
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
            state.record(method, code, time.perf_counter() - started, context, message, client)
            if exc is not None:
                context.abort(code, message)

        def unary_response(behavior, streaming_request):
            def wrapped(request, context):
                started = time.perf_counter()
                state.enter(method)
                claimed = None
                client = None
                inbox = None
                try:
                    client = admit(context)
                    claimed = state.claim(bound, client)
                    # Read only once admitted (an unauthenticated call's bytes never are).
                    inbox = state.inbox(request, context) if streaming_request else None
                    messages = request if inbox is None else inbox
                    response = behavior(messages, auth.ClientContext(context, client))
                except Exception as exc:  # noqa: BLE001 - mapped, never UNKNOWN
                    state.leave(method, claimed)
                    finish(context, started, exc, streaming_request, client)
                    raise AssertionError("unreachable") from exc  # abort raised already
                finally:
                    if inbox is not None:
                        inbox.close()
                state.leave(method, claimed)
                finish(context, started, None, client=client)
                return response

            return wrapped

        def stream_response(behavior, streaming_request):
            def wrapped(request, context):
                started = time.perf_counter()
                state.enter(method)
                error = None
                claimed = None
                client = None
                inbox = None
                try:
                    client = admit(context)
                    claimed = state.claim(bound, client)
                    # Read only once admitted (an unauthenticated call's bytes never are).
                    inbox = state.inbox(request, context) if streaming_request else None
                    messages = request if inbox is None else inbox
                    yield from behavior(messages, auth.ClientContext(context, client))
                except GeneratorExit:
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped, never UNKNOWN
                    error = exc
                finally:
                    if inbox is not None:
                        inbox.close()
                    state.leave(method, claimed)
                    if error is None:
                        finish(context, started, None, client=client)
                if error is not None:
                    finish(context, started, error, streaming_request, client)

            return wrapped

        if handler.unary_unary:
            fn = unary_response(handler.unary_unary, False)
            return grpc.unary_unary_rpc_method_handler(
                fn, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            fn = unary_response(handler.stream_unary, True)
            return grpc.stream_unary_rpc_method_handler(
                fn, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            fn = stream_response(handler.unary_stream, False)
            return grpc.unary_stream_rpc_method_handler(
                fn, handler.request_deserializer, handler.response_serializer
            )
        fn = stream_response(handler.stream_stream, True)
        return grpc.stream_stream_rpc_method_handler(
            fn, handler.request_deserializer, handler.response_serializer
        )


class _State:
    """Shared mutable server state the interceptor reads."""

    def __init__(
        self,
        tokens: auth.Tokens,
        metrics: Metrics | None,
        bounds: dict[str, int] | None = None,
        per_client: int = 1,
    ) -> None:
        self.tokens = tokens
        self.metrics = metrics
        # Spare "rpc" places beyond the bound, for clients holding fewer than per_client.
        self.per_client = self.spare = max(1, per_client)
        self.spare_used = 0
        self.stream_idle_seconds = 30.0  # --stream-idle-timeout (0: no limit)
        self.by_client: dict[str, int] = {}  # open "rpc" calls by client
        self.draining = False
        self._lock = threading.Lock()
        self.in_flight = 0
        # Concurrent RPCs per kind ("rpc": the services; "reflection"); health is unbounded.
        self.bounds = dict(bounds or {})
        self.active = dict.fromkeys(self.bounds, 0)
        # (server folder, what a client sees instead), longest first.
        self.hidden: list[tuple[str, str]] = []

    def claim(self, kind: str, client: str) -> tuple[str, str, bool]:
        """Take one of the places of ``kind`` for ``client``; Busy (RESOURCE_EXHAUSTED,
        retry) when all are taken. The services have ``spare`` places beyond their bound
        for clients holding fewer than ``per_client`` calls, so one client's idle calls
        never leave the others without a place. Returns the claim, for :meth:`leave`."""
        with self._lock:
            limit = self.bounds.get(kind)
            if limit is None:
                self.active[kind] = self.active.get(kind, 0) + 1
                return kind, client, False
            mine = self.by_client.get(client, 0)
            spare = False
            if self.active[kind] >= limit:
                if kind != "rpc" or self.spare_used >= self.spare or mine >= self.per_client:
                    share = (
                        f", this client holds {mine} (at most {self.per_client} per client "
                        "once they are all taken, --max-calls-per-client)"
                        if kind == "rpc" and mine
                        else ""
                    )
                    raise Busy(
                        f"server busy: {limit} calls are being served (the limit){share}; "
                        "retry later",
                        reason="too_many_calls",
                    )
                spare = True
                self.spare_used += 1
            else:
                self.active[kind] += 1
            if kind == "rpc":
                self.by_client[client] = mine + 1
            return kind, client, spare

    def inbox(self, requests: Any, context: Any) -> Inbox:
        """A streamed call's messages under ``--stream-idle-timeout`` (every client-streaming
        RPC: uploads, imports and regions alike)."""
        return Inbox(requests, self.stream_idle_seconds, context.is_active)

    def hide(self, folder: str | Path, shown_as: str) -> None:
        """Show ``folder`` (a server path) as ``shown_as`` in every message a client gets."""
        for form in {str(folder), str(Path(folder).expanduser().resolve())}:
            self.hidden.append((form.rstrip("/"), shown_as))
        self.hidden.sort(key=lambda pair: -len(pair[0]))

    def redact(self, message: str) -> str:
        """``message`` without the server's folders (they go to the log, never to clients)."""
        clean = message
        for folder, shown_as in self.hidden:
            if folder and folder != "/":
                clean = clean.replace(folder, shown_as)
        if clean != message:
            log.info("message sent with server folders hidden: %s", message)
        return clean

    def enter(self, method: str) -> None:
        with self._lock:
            self.in_flight += 1
        if self.metrics:
            self.metrics.in_flight.labels(method).inc()

    def reject(self, reason: str | None) -> None:
        if reason and self.metrics:
            self.metrics.rejected.labels(reason).inc()

    def leave(self, method: str, claim: tuple[str, str, bool] | None = None) -> None:
        with self._lock:
            self.in_flight -= 1
            if claim is not None:
                kind, client, spare = claim
                if spare:
                    self.spare_used -= 1
                else:
                    self.active[kind] -= 1
                if kind == "rpc":
                    left = self.by_client.pop(client, 1) - 1
                    if left > 0:
                        self.by_client[client] = left
        if self.metrics:
            self.metrics.in_flight.labels(method).dec()

    def record(
        self,
        method: str,
        code: grpc.StatusCode,
        seconds: float,
        context,
        message: str,
        client: str | None = None,
    ) -> None:
        entry = {
            "event": "rpc",
            "method": method,
            "code": code.name,
            "ms": round(seconds * 1000, 2),
            "peer": context.peer(),
        }
        if client:
            entry["client"] = client
        if message:
            entry["message"] = message
        access_log.info(json.dumps(entry))
        if self.metrics:
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(seconds)
            self.metrics.by_client(client or "-", code.name, seconds)
            if code != grpc.StatusCode.OK:
                self.metrics.errors.labels(method, code.name).inc()


class MilsilServer:
    """A running server: ``port``, ``server`` (grpc.Server), ``store``, ``jobs``; ``drain``/``stop``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        limits = config.limits
        check_mode(config.precision)
        self.devices = parse_devices(config.device)
        self.device = self.devices[0]
        for root in config.slide_roots:
            if not Path(root).expanduser().is_dir():
                raise MilsilError(f"--slide-root {root} is not a folder")
        self.store = Store(config.data_dir)
        self.cache = ModelCache(self._model_path, device=self.device)
        self.slots = ComputeSlots(
            max_waiting=config.max_waiting,
            devices=[d for d in self.devices for _ in range(config.compute_slots)],
        )
        self.memory = MemoryBudget(
            config.max_memory_mb * 2**20 if config.max_memory_mb else default_max_memory()
        )
        self.jobs = JobManager(self.store, max_queued=config.max_queued_jobs)
        self.metrics = (
            Metrics(config.host, config.metrics_port, self.devices)
            if config.metrics_port is not None
            else None
        )
        if self.metrics:
            self.metrics.watch_slots(self.slots)
            self.metrics.watch_jobs(self.jobs)
            self.metrics.watch_memory(self.memory)
        # The services' calls are bounded here, not by grpc's maximum_concurrent_rpcs (which
        # counts health too): health always has threads of its own (RESERVED_THREADS).
        bound = config.max_concurrent_rpcs or config.max_workers
        per_client = config.max_calls_per_client or max(1, bound // 2)
        self.state = _State(
            auth.Tokens(config.token, config.tokens_file),
            self.metrics,
            {"rpc": bound, "reflection": REFLECTION_CALLS},
            per_client,
        )
        self.state.stream_idle_seconds = config.stream_idle_timeout
        self.state.hide(self.store.root, "<data-dir>")
        for root in config.slide_roots:
            self.state.hide(root, "<slide-root>")
        output_root = config.output_root or self.store.root / "outputs"
        self.state.hide(output_root, "<output-root>")
        max_bytes = config.max_message_mb * 2**20
        options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=bound + per_client + RESERVED_THREADS,
                thread_name_prefix="milsil-rpc",
            ),
            interceptors=[_Interceptor(self.state)],
            options=options,
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(
                self.store, self.cache, max_bytes, config.max_model_mb * 2**20, config.precision
            ),
            self.server,
        )
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(
                Resources(
                    self.store,
                    self.cache,
                    self.slots,
                    limits,
                    self.memory,
                    SlidePaths(config.slide_roots, output_root),
                    max_message_bytes=max_bytes,
                    stream_idle_seconds=config.stream_idle_timeout,
                    precision=config.precision,
                )
            ),
            self.server,
        )
        training_service_pb2_grpc.add_TrainingServiceServicer_to_server(
            TrainingServicer(self.store, self.jobs, limits), self.server
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        credentials = auth.server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        address = f"{_bracket(config.host)}:{config.port}"
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if not self.port:
            raise MilsilError(f"cannot listen on {address} (port in use or host not local)")
        if not _is_loopback(config.host) and not (
            (config.token or config.tokens_file) and credentials
        ):
            log.warning(
                "listening on %s without both a token and TLS: anyone on the network can use it",
                address,
            )
        self.server.start()
        self._stopped = threading.Event()
        log.info(
            json.dumps(
                {
                    "event": "start",
                    "address": f"{config.host}:{self.port}",
                    "tls": credentials is not None,
                    "auth": bool(config.token or config.tokens_file),
                    "devices": [str(d) for d in self.devices],
                    "precision": config.precision,
                    "data_dir": str(self.store.root),
                    "slide_roots": [str(r) for r in config.slide_roots],
                    "metrics_port": self.metrics.port if self.metrics else None,
                }
            )
        )

    def _model_path(self, model_id: str) -> Path:
        self.store.get_model(model_id)
        return self.store.model_path(model_id)

    def drain(self, grace: float | None = None) -> None:
        """SIGTERM: NOT_SERVING, refuse new RPCs, checkpoint jobs, let in-flight RPCs finish."""
        grace = self.config.grace if grace is None else grace
        log.info(
            json.dumps({"event": "drain", "grace_s": grace, "in_flight": self.state.in_flight})
        )
        self.health.enter_graceful_shutdown()
        self.state.draining = True
        jobs = threading.Thread(target=self.jobs.shutdown, args=(max(grace, 1.0),), daemon=True)
        jobs.start()
        deadline = time.monotonic() + grace
        while self.state.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        jobs.join(max(0.0, deadline - time.monotonic()) + 5)
        self.stop(0)

    def stop(self, grace: float | None = 0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.server.stop(grace).wait()
        self.jobs.shutdown(grace or 0.0)
        if self.metrics:
            self.metrics.stop()
        self.store.close()
        log.info(json.dumps({"event": "stopped"}))

    def wait(self) -> None:
        self.server.wait_for_termination()


CANCEL_SETTLE_SECONDS = 0.25  # how long a failed streaming call waits to see a cancel land


def _client_gone(context: Any) -> bool:
    """Whether the client has cancelled (or its deadline passed), waiting a moment for
    gRPC to deliver a cancel that raced the end of the request stream."""
    deadline = time.monotonic() + CANCEL_SETTLE_SECONDS
    while context.is_active():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_server(config: ServerConfig | None = None) -> MilsilServer:
    """Create, bind and start a server; ``.port`` is the bound port."""
    return MilsilServer(config or ServerConfig())
