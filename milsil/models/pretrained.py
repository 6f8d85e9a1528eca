"""ImageNet initialisation: the published weights, downloaded once, checked, loaded.

``pretrained`` (of :func:`milsil.models.create_model`, ``TrainConfig`` and every
``--pretrained`` flag) is one of:

* ``"imagenet"`` -- the published ImageNet weights of the architecture:

  - BagNet-9/17/33: the files of the official release of Brendel & Bethge's repository
    (github.com/wielandbrendel/bag-of-local-features-models; the reference code names them
    ``bagnet8-34f4ccd2.pth.tar``, ``bagnet16-105524de.pth.tar``, ``bagnet32-2ddd53ed.pth.tar``).
    No hash is published for them (the reference code loads them with torch.hub's hash
    check off), so what is checked is the file's structure: exactly the reference BagNet's
    tensors and shapes at width 64 with a 1000-class ``fc``; the file's sha256 is printed.
  - ResNet-50 and DenseNet-161: torchvision's ``ResNet50_Weights.IMAGENET1K_V1`` and
    ``DenseNet161_Weights.IMAGENET1K_V1``; their file names embed the first 8 hex digits
    of the file's sha256 (torch.hub's convention), which is checked.

  A file is downloaded once into the torch hub cache (``$TORCH_HOME/hub/checkpoints``,
  where torchvision keeps the same files) and checked again whenever it is read (the
  hash where one is published, the structure always).
  ``MILSIL_WEIGHTS_MIRROR=http://host/base`` replaces the scheme and host of every URL
  (the path is kept): a local mirror laid out like the real sources. Offline, ``imagenet``
  fails with one line naming the URL and the ``FILE`` alternative.
* a path ``FILE`` -- a local copy in any published key layout: torchvision's current one,
  the old DenseNet one (``denselayer1.norm.1.weight``, renamed on load as torchvision
  does), the BagNet reference one, with or without DataParallel's ``module.`` prefix or a
  ``{"state_dict": ...}`` wrapper. The ImageNet classifier (``fc.*``/``classifier.*``)
  is dropped; everything else must match the backbone exactly.
* ``"none"`` or None -- no initialisation from weights (the architecture's own init).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from milsil.errors import CheckpointError, MilsilError, UnavailableHereError

MIRROR_ENV = "MILSIL_WEIGHTS_MIRROR"
# Where the cache is, in words (messages may reach gRPC clients: no server paths in them).
CACHE_HINT = (
    "the torch hub cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints)"
)
BAGNET_RELEASE = (
    "https://github.com/wielandbrendel/bag-of-local-features-models/releases/download/1.0"
)


@dataclass(frozen=True)
class Source:
    """Where an architecture's published ImageNet weights live and how they are checked."""

    url: str
    hash_prefix: str | None  # sha256 prefix published in the file name, or None
    note: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _torchvision_url(name: str) -> str:
    from torchvision.models import DenseNet161_Weights, ResNet50_Weights

    weights = {"resnet50": ResNet50_Weights, "densenet161": DenseNet161_Weights}[name]
    return weights.IMAGENET1K_V1.url


def source_for(arch: str) -> Source:
    """The published ImageNet weights of ``arch`` (MilsilError when there are none)."""
    bagnet_files = {
        "bagnet9": "bagnet8-34f4ccd2.pth.tar",
        "bagnet17": "bagnet16-105524de.pth.tar",
        "bagnet33": "bagnet32-2ddd53ed.pth.tar",
    }
    if arch in bagnet_files:
        return Source(
            f"{BAGNET_RELEASE}/{bagnet_files[arch]}",
            None,
            "official BagNet release; no published hash: structure checked",
        )
    if arch in ("resnet50", "densenet161"):
        url = _torchvision_url(arch)
        match = re.search(r"-([0-9a-f]{8,})\.", url.rsplit("/", 1)[-1])
        return Source(
            url, match.group(1) if match else None, "torchvision IMAGENET1K_V1; sha256 checked"
        )
    raise MilsilError(
        f"{arch} has no published ImageNet weights (attention MIL is trained from scratch, "
        "as in the paper); use pretrained 'none'"
    )


def mirrored(url: str) -> str:
    """``url`` with its scheme and host replaced by ``$MILSIL_WEIGHTS_MIRROR`` when set."""
    base = os.environ.get(MIRROR_ENV, "").strip().rstrip("/")
    if not base:
        return url
    path = url.split("://", 1)[-1].split("/", 1)[-1]
    return f"{base}/{path}"


def cache_dir() -> Path:
    """torch hub's checkpoint folder (where torchvision caches the same files)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(path: Path, source: Source, what: str) -> str:
    digest = sha256_of(path)
    if source.hash_prefix and not digest.startswith(source.hash_prefix):
        raise CheckpointError(
            f"{what} {path.name} fails the published hash check (sha256 {digest[:16]}..., "
            f"the file name says {source.hash_prefix}): not the published file"
        )
    return digest


def download(source: Source, timeout: float = 30.0) -> Path:
    """The cached copy of ``source`` (downloaded once; hash-checked where a hash is
    published -- torchvision's files -- and otherwise only structure-checked by the loader,
    the BagNet files; a download failing its hash is never put into the cache)."""
    target = cache_dir() / source.filename
    if target.is_file():
        _check_hash(target, source, "cached file")
        return target
    url = mirrored(source.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    print(f"milsil: downloading ImageNet weights {url} -> {target}", file=sys.stderr, flush=True)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "milsil"})
        with urllib.request.urlopen(request, timeout=timeout) as response, partial.open("wb") as f:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
        digest = _check_hash(partial, source, "downloaded file")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise UnavailableHereError(
            f"cannot download the ImageNet weights {url} ({reason}); offline? fetch that file "
            f"elsewhere and pass its path (--pretrained FILE), or put it into {CACHE_HINT}"
        ) from None
    except CheckpointError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    print(f"milsil: {target.name}: sha256 {digest}", file=sys.stderr, flush=True)
    return target


def is_available(arch: str) -> bool:
    """Whether ``imagenet`` weights for ``arch`` are already in the cache (no network)."""
    return (cache_dir() / source_for(arch).filename).is_file()


def probe(arch: str, timeout: float = 5.0) -> None:
    """Raise :class:`UnavailableHereError` when ``arch``'s ImageNet weights are neither
    cached nor reachable (a HEAD request); used by the server before it queues a job."""
    source = source_for(arch)
    if is_available(arch):
        return
    url = mirrored(source.url)
    try:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "milsil"})
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UnavailableHereError(
            f"cannot download the ImageNet weights {url} ({reason}); put {source.filename} "
            f"into {CACHE_HINT} on this machine, or train from scratch (pretrained 'none')"
        ) from None


# ------------------------------------------------------------------ key layouts

_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_CLASSIFIERS = ("fc.", "classifier.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A published state dict in any of its layouts, as torchvision's current key names."""
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"cannot read pretrained weights {path}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (names -> tensors)")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        match = _OLD_DENSENET.match(key)
        if match:
            key = match.group(1) + match.group(2)
        out[key] = value
    return out


def load_backbone_state(
    backbone: torch.nn.Module, state: dict[str, torch.Tensor], what: str
) -> int:
    """Load ``state`` (classifier dropped) into ``backbone``; every tensor must match.

    Files older than BatchNorm's ``num_batches_tracked`` lack it: it is then left as is.
    Returns the number of tensors loaded.
    """
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIERS)}
    own = backbone.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise CheckpointError(
            f"{what}: {len(bad)} unexpected/mis-shaped and {len(missing)} missing tensors "
            f"(e.g. {(bad + missing)[:3]})"
        )
    backbone.load_state_dict(state)
    return len(state)


def check_reference_structure(
    path: Path, arch: str, state: dict[str, torch.Tensor], backbone: torch.nn.Module
) -> None:
    """A downloaded file must be exactly the published model: the width-64 backbone's
    tensors and shapes, plus a 1000-class ImageNet classifier."""
    features = getattr(backbone, "out_channels", None)
    head = "classifier" if arch == "densenet161" else "fc"
    expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    expected |= {f"{head}.weight": (1000, features), f"{head}.bias": (1000,)}
    expected = {k: s for k, s in expected.items() if not k.endswith("num_batches_tracked")}
    got = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if got != expected:
        wrong = sorted(set(got) ^ set(expected)) or [k for k in got if got[k] != expected[k]]
        path.unlink(missing_ok=True)
        raise CheckpointError(
            f"{path.name} is not the published {arch} (layout differs at {wrong[:3]}); removed "
            "from the cache, try again or pass a local copy with --pretrained FILE"
        )


def resolve(arch: str, spec: str | Path | None) -> tuple[Path | None, str]:
    """The weights file ``spec`` names for ``arch`` and a one-line description."""
    if spec is None or str(spec) in ("", "none"):
        return None, "no pretrained weights"
    if str(spec) == "imagenet":
        source = source_for(arch)
        path = download(source)
        return path, f"ImageNet weights {source.filename} ({source.note}) from {path.parent}"
    path = Path(spec)
    if not path.is_file():
        raise MilsilError(
            f"pretrained weights file not found: {path} (give 'imagenet', 'none' or a local file)"
        )
    return path, f"weights from {path}"


def load_pretrained(model: torch.nn.Module, spec: str | Path | None) -> str:
    """Initialise ``model``'s backbone from ``spec`` (see the module doc); returns what
    was done, in words."""
    arch, width = model.config.arch, model.config.width
    backbone = getattr(model, "backbone", None)
    if spec is None or str(spec) in ("", "none"):
        return "no pretrained weights"
    if backbone is None:
        raise MilsilError(
            f"{arch} has no published ImageNet weights (attention MIL is trained from "
            "scratch, as in the paper); use pretrained 'none'"
        )
    if str(spec) == "imagenet" and width != 64:
        raise MilsilError(
            f"ImageNet weights exist for width 64 only (the published size), not width {width}"
        )
    path, what = resolve(arch, spec)
    assert path is not None
    if str(spec) == "imagenet":
        try:
            state = read_state_dict(path)
        except CheckpointError:  # a cached file that does not read is dropped
            path.unlink(missing_ok=True)
            raise CheckpointError(
                f"cannot read the downloaded ImageNet weights {path.name} (truncated or "
                "corrupted); removed from the cache, try again"
            ) from None
        check_reference_structure(path, arch, state, backbone)
        shown = path.name
    else:
        state = read_state_dict(path)
        shown = str(path)
    load_backbone_state(backbone, state, f"{shown} does not match {arch} width {width}")
    return what
