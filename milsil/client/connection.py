"""The connection under :class:`~milsil.client.grpc_client.MilsilClient`: channel, TLS,
token, stubs, and calls that wait while the server is busy.

Busy is not failure: every call that the server refuses as busy (``milsil-retry: busy``,
see :mod:`milsil.client.retry`) is retried after a jittered exponential backoff until the
call's deadline (``timeout``; none: until it is served); waiting lines ("queued for
compute, position 2 of 5", "server busy ...; retrying in 1.3 s") go to ``on_wait``
(default: the ``milsil.client`` logger at INFO). Too large is final and raised at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from milsil.client.retry import Retrier, method_name, queue_line
from milsil.errors import MilsilError
from milsil.v1 import (
    inference_service_pb2_grpc,
    model_service_pb2_grpc,
    training_service_pb2_grpc,
)

_C = TypeVar("_C", bound="Connection")


class Connection:
    """A channel to a milsil server, its stubs, and calls that wait while it is busy;
    every call raises ``grpc.RpcError`` on a non-OK status."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        token: str | None = None,
        root_certificates: bytes | str | Path | None = None,
        client_cert: bytes | str | Path | None = None,
        client_key: bytes | str | Path | None = None,
        max_message_mb: int = 64,
        timeout: float | None = None,
        server_name: str | None = None,
        tls: bool | None = None,
        retry_busy: bool = True,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_mb * 2**20),
            ("grpc.max_send_message_length", max_message_mb * 2**20),
            # A connection of its own: the server queues work fairly per connection.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        use_tls = (
            tls if tls is not None else root_certificates is not None or client_cert is not None
        )
        if use_tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates),
                private_key=_pem(client_key),
                certificate_chain=_pem(client_cert),
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.retry = Retrier(
            enabled=retry_busy,
            on_wait=on_wait if on_wait is not None else logging.getLogger("milsil.client").info,
        )
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(self.channel)
        self.training = training_service_pb2_grpc.TrainingServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        return {
            "metadata": self.metadata,
            "timeout": timeout if timeout is not None else self.timeout,
        }

    def _all_pages(self, method, request_for: Callable[[str], Any], field: str) -> list[Any]:
        """Every item of a paged List RPC: follow ``next_page_token`` until it is empty."""
        items, token = [], ""
        while True:
            page = self._unary(method, request_for(token))
            items.extend(getattr(page, field))
            token = page.next_page_token
            if not token:
                return items

    def _unary(self, method, request: Any, timeout: float | None = None) -> Any:
        """One answer (``request`` may make a request stream); waits while the server is busy."""
        return self.retry.unary(method, request, self.metadata, self._kw(timeout)["timeout"])

    def _stream(self, method, request: Any, timeout: float | None = None, is_result=None):
        """Streamed answers; waits while the server is busy, before the first result."""
        timeout = self._kw(timeout)["timeout"]
        return self.retry.streaming(method, request, self.metadata, timeout, is_result)

    def _queued_stream(self, method, requests, timeout: float | None) -> Iterator[Any]:
        """The answers of a call that reports its place in the compute queue (``queue``
        messages, said through ``on_wait`` and left out)."""
        what = method_name(method)
        for response in self._stream(
            method, requests, timeout, is_result=lambda r: not r.HasField("queue")
        ):
            if response.HasField("queue"):
                self._say_queue(what, response.queue)
            else:
                yield response

    def _say_queue(self, what: str, queue: Any) -> None:
        self.retry.say(queue_line(what, queue.position, queue.waiting))

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """Health status name ("SERVING", "NOT_SERVING", ...) of the server or one service."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        response = self.retry.call(
            "Health",
            lambda left: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=left),
            timeout,
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MilsilError(f"cannot read PEM file {path}: {exc.strerror or exc}") from None
