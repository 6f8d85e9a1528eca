"""Auth on/off, TLS and mutual TLS, message limits, reflection, metrics, draining."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import register_tiny_model, running_server, self_signed

from milsil.client import MilsilClient


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_bearer_token(tmp_path):
    with running_server(tmp_path, token="s3cret") as server:
        register_tiny_model(server)
        target = f"127.0.0.1:{server.port}"
        anonymous = MilsilClient(target)
        assert anonymous.health() == "SERVING"  # health is exempt
        code, details = _code(anonymous.list_models)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
        wrong = MilsilClient(target, token="s3cre")
        assert _code(wrong.list_models)[0] == grpc.StatusCode.UNAUTHENTICATED
        # Streaming RPCs are guarded too.
        image = np.zeros((16, 16, 3), np.uint8)
        assert (
            _code(lambda: wrong.heatmap("models/tiny", image))[0] == grpc.StatusCode.UNAUTHENTICATED
        )
        right = MilsilClient(target, token="s3cret")
        assert [m.name for m in right.list_models()] == ["models/tiny"]
        assert right.heatmap("models/tiny", image, stride=8).logits.shape == (2, 2, 2)
        for c in (anonymous, wrong, right):
            c.close()


def test_tls_and_mutual_tls(tmp_path):
    pem = self_signed(tmp_path / "pki")
    with running_server(
        tmp_path / "tls", tls_cert=str(pem["server_cert"]), tls_key=str(pem["server_key"])
    ) as s:
        client = MilsilClient(f"localhost:{s.port}", root_certificates=pem["ca"])
        assert client.health() == "SERVING" and client.list_models() == []
        client.close()
        plain = MilsilClient(f"localhost:{s.port}")
        assert _code(lambda: plain.health(timeout=2))[0] == grpc.StatusCode.UNAVAILABLE
        plain.close()
    with running_server(
        tmp_path / "mtls",
        tls_cert=str(pem["server_cert"]),
        tls_key=str(pem["server_key"]),
        tls_client_ca=str(pem["ca"]),
    ) as s:
        with_cert = MilsilClient(
            f"localhost:{s.port}",
            root_certificates=pem["ca"],
            client_cert=pem["client_cert"],
            client_key=pem["client_key"],
        )
        assert with_cert.list_models() == []
        with_cert.close()
        without = MilsilClient(f"localhost:{s.port}", root_certificates=pem["ca"])
        assert _code(lambda: without.list_models())[0] == grpc.StatusCode.UNAVAILABLE
        without.close()


def test_bad_tls_config_is_a_clear_error(tmp_path):
    from milsil.errors import MilsilError

    with pytest.raises(MilsilError, match="--tls-key"):
        running_server(tmp_path, tls_cert=str(tmp_path / "missing.pem")).__enter__()


def test_message_limit_reflection_metrics_and_drain(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics_port = sock.getsockname()[1]
    with running_server(tmp_path, max_message_mb=1, metrics_port=metrics_port, grace=5.0) as server:
        register_tiny_model(server)
        client = MilsilClient(f"127.0.0.1:{server.port}", max_message_mb=8)
        big = np.zeros((700, 700, 3), np.uint8)  # 1.47 MB in one tile > 1 MiB limit
        code, _ = _code(lambda: client.heatmap("models/tiny", big, tile_size=700))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.health() == "SERVING"

        # Reflection lists every service (what grpcurl uses).
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
        answer = next(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in answer.list_services_response.service}
        assert {
            "milsil.v1.ModelService",
            "milsil.v1.InferenceService",
            "milsil.v1.TrainingService",
            "grpc.health.v1.Health",
        } <= names

        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert 'milsil_requests_total{code="OK",method="/grpc.health.v1.Health/Check"}' in text
        assert 'code="RESOURCE_EXHAUSTED"' in text or "milsil_request_seconds" in text
        assert "milsil_device_memory_bytes" in text

        # Drain: a slow request in flight finishes; new ones are UNAVAILABLE; health NOT_SERVING.
        slow_image = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
        results = {}

        def slow():
            results["shape"] = client.heatmap("models/tiny", slow_image, tile_size=100).logits.shape

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 5
        while server.state.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        drainer = threading.Thread(target=server.drain)
        drainer.start()
        health = health_pb2_grpc.HealthStub(client.channel)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.01)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        code, details = _code(client.list_models)
        assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details
        t.join(10)
        drainer.join(10)
        assert results.get("shape") == (2, 200, 200), "in-flight request must finish during drain"
        client.close()
