"""Bearer-token authentication, the caller's identity, and TLS credentials.

A caller is its user (a ``--tokens-file`` maps tokens to user names; the single
``--token`` is the user ``token``) or, without tokens, its peer's host: the fair queue
(:mod:`.slots`) and the per-client cap on open calls count by it.

The token check is a constant-time comparison (``hmac.compare_digest``) of the
``authorization: Bearer <token>`` metadata; the standard health service is exempt so
load balancers and ``grpc_health_probe`` need no secret.
"""

from __future__ import annotations

import hmac
import logging
import threading
from pathlib import Path
from typing import Any

import grpc

from milsil.errors import MilsilError

log = logging.getLogger("milsil.server")

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def is_exempt(method: str) -> bool:
    return method.startswith(EXEMPT_PREFIXES)


SINGLE_TOKEN_USER = "token"  # the identity of --token's holder


class Tokens:
    """Who a bearer token belongs to: ``--token`` (the user ``token``) and the users of a
    ``--tokens-file`` (one ``NAME TOKEN`` per line, ``#`` comments), the file re-read
    whenever it changes, so users are added and removed without a restart.

    Tokens are compared in constant time (``hmac.compare_digest``), every one of them."""

    def __init__(self, token: str | None = None, path: str | Path | None = None) -> None:
        self.token = token or None
        self.path = Path(path).expanduser() if path else None
        self._users: list[tuple[bytes, str]] = []
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            self._reload()  # a missing or malformed file fails at start, by name

    @property
    def enabled(self) -> bool:
        return bool(self.token or self.path)

    def user(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
        """The caller's user name ("" when no token is configured); None when refused."""
        if not self.enabled:
            return ""
        given = _bearer(metadata)
        if given is None:
            return None
        found = None
        if self.token and hmac.compare_digest(given, self.token.encode()):
            found = SINGLE_TOKEN_USER
        for token, name in self._current():
            if hmac.compare_digest(given, token) and found is None:
                found = name
        return found

    def _current(self) -> list[tuple[bytes, str]]:
        if self.path is None:
            return []
        with self._lock:
            try:
                st = self.path.stat()
                if (st.st_mtime_ns, st.st_size) != self._stamp:
                    self._reload()
            except (OSError, MilsilError) as exc:  # keep the last good list; say why
                log.warning("--tokens-file not reloaded: %s", exc)
            return self._users

    def _reload(self) -> None:
        assert self.path is not None
        if not self.path.is_file():
            raise MilsilError(f"--tokens-file {self.path} is not a file")
        st = self.path.stat()
        users = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 2:
                raise MilsilError(
                    f"--tokens-file {self.path} line {number}: expected 'NAME TOKEN', "
                    f"got {len(parts)} fields"
                )
            users.append((parts[1].encode(), parts[0]))
        self._users, self._stamp = users, (st.st_mtime_ns, st.st_size)


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> bytes | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            scheme, _, given = text.partition(" ")
            if scheme.lower() == "bearer":
                return given.strip().encode()
    return None


def peer_host(peer: str) -> str:
    """A gRPC peer without its port (``ipv4:10.0.0.5:51234`` -> ``ipv4:10.0.0.5``): the
    connections of one machine are one client."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer


def client_of(context: Any) -> str:
    """Who a call is, for the fair queue and the per-client call cap: its authenticated
    user when the interceptor set one (``context.client``), else its peer's host."""
    return getattr(context, "client", None) or peer_host(context.peer())


class ClientContext:
    """A call's context with the caller's identity (``client``) beside gRPC's own."""

    def __init__(self, context: Any, client: str) -> None:
        self._context, self.client = context, client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


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
