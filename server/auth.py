"""Bearer-token authentication and TLS credentials.

The token check is a constant-time comparison (``hmac.compare_digest``) of the
``authorization: Bearer <token>`` metadata; the standard health service is exempt so
load balancers and ``grpc_health_probe`` need no secret.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from milsil.errors import MilsilError

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def is_exempt(method: str) -> bool:
    return method.startswith(EXEMPT_PREFIXES)


def token_ok(expected: str | None, metadata: tuple[tuple[str, str | bytes], ...] | None) -> bool:
    """True when no token is configured or the metadata carries the right bearer token."""
    if not expected:
        return True
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            scheme, _, given = text.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), expected.encode()
            ):
                return True
    return False


def _read_pem(path: str | Path | None, flag: str) -> bytes | None:
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise MilsilError(f"{flag} file not found: {p}")
    data = p.read_bytes()
    if b"-----BEGIN" not in data:
        raise MilsilError(f"{flag} {p} is not a PEM file")
    return data


def server_credentials(
    cert: str | None, key: str | None, client_ca: str | None
) -> grpc.ServerCredentials | None:
    """TLS server credentials (mutual TLS when ``client_ca`` is given); None for plaintext."""
    if not cert and not key:
        if client_ca:
            raise MilsilError(
                "--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS plus client certs)"
            )
        return None
    if not (cert and key):
        raise MilsilError("TLS needs both --tls-cert and --tls-key (PEM files)")
    ca = _read_pem(client_ca, "--tls-client-ca")
    return grpc.ssl_server_credentials(
        [(_read_pem(key, "--tls-key"), _read_pem(cert, "--tls-cert"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
