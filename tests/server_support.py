"""Helpers for tests and benchmarks: tiny models, tiny datasets, self-signed certificates.

Test-only (``self_signed`` needs the dev dependency ``cryptography``), so it lives here
and not in the wheel. Tests import it as ``server_support`` (pytest puts ``tests/`` on
``sys.path``); bench and tool scripts put the repository root on ``sys.path`` and import
``tests.server_support``.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from milsil.client.outlines import OUTLINE_FIELDS
from milsil_server.app import MilsilServer, ServerConfig, build_server

# Every outline clean-up step off (``outline=`` of the client's annotate calls): the
# outlines as thresholded, for tests of the computation rather than of the clean-up.
RAW_OUTLINES = dict.fromkeys(OUTLINE_FIELDS, 0.0)


def tiny_model(
    arch: str = "bagnet9", width: int = 8, seed: int = 0, classes=("benign", "malignant")
):
    """A width-8 model with random weights and non-trivial BatchNorm statistics (eval mode)."""
    from milsil.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=len(classes), width=width, class_names=list(classes))
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model.eval()


def register_tiny_model(server: MilsilServer, model_id: str = "tiny", **kwargs: Any):
    """Save a tiny model and register it in the server's store; returns the model."""
    from milsil.models import save_checkpoint

    model = tiny_model(**kwargs)
    path = server.store.root / "tmp" / f"{model_id}.pt"
    save_checkpoint(model, path, provenance={"config": {"patch_size": 32}})
    server.store.register_model(path, model_id, display_name=model_id, move=True)
    return model


def tiny_bags(
    patients: int = 4, bags_per_patient: int = 2, size: int = 32, tiles: int = 4, seed: int = 0
) -> list[tuple[np.ndarray, str, str]]:
    """``(tiles, label, patient)`` bags: malignant bags have a dark blob in some tiles."""
    rng = np.random.default_rng(seed)
    bags = []
    for p in range(patients):
        for b in range(bags_per_patient):
            malignant = (p + b) % 2 == 1
            t = rng.integers(150, 230, (tiles, size, size, 3), dtype=np.uint8)
            if malignant:
                lo, hi = size // 4, size // 4 + max(2, size * 3 // 8)  # a dark blob in tile 0
                t[0, lo:hi, lo:hi] = rng.integers(20, 80, (hi - lo, hi - lo, 3), dtype=np.uint8)
            bags.append((t, "malignant" if malignant else "benign", f"patient{p}"))
    return bags


def self_signed(directory: Path, common_name: str = "localhost") -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (PEM files)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("milsil test CA"))
        .issuer_name(name("milsil test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage, san: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(cn), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf(common_name, ExtendedKeyUsageOID.SERVER_AUTH, True)
    client_key, client_cert = leaf("milsil client", ExtendedKeyUsageOID.CLIENT_AUTH, False)
    paths = {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client.key",
    }
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server_cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths["client_cert"].write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, paths["server_key"])
    write_key(client_key, paths["client_key"])
    return paths


@contextmanager
def running_server(data_dir: Path, **config: Any) -> Iterator[MilsilServer]:
    """A server on a free loopback port, stopped afterwards."""
    server = build_server(ServerConfig(port=0, data_dir=data_dir, device="cpu", **config))
    try:
        yield server
    finally:
        server.stop(0)


def serve_process(
    data_dir: Path, *args: str, umask: int | None = None
) -> tuple[subprocess.Popen, str]:
    """``milsil serve`` as a process of its own on a free loopback port (CPU), started
    under ``umask`` if given -> ``(process, "127.0.0.1:port")``. Its log goes to
    ``<data_dir>.log``; stop it with :func:`stop_process`."""
    data_dir = Path(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / f"{data_dir.name}.log", "ab")  # noqa: SIM115 - the child keeps it
    command = [sys.executable, "-m", "milsil.cli", "serve", "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(
        [*command, "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )
    log.close()
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"milsil serve did not start: {line.strip() or 'no output'}")
    return proc, line.split("listening on ")[1].split()[0]


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (the server drains), then SIGKILL if it has not ended within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (``VmRSS``, or ``VmHWM``: its peak) from /proc, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    """Reset a process's peak resident memory (``VmHWM``) to its current RSS (Linux)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
