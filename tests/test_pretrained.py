"""ImageNet initialisation: published key layouts load exactly; downloads are checked.

The files are built here in the layouts the published files have (torchvision's current
names; the old DenseNet names ``denselayer1.norm.1.weight`` that torchvision renames on
load, without ``num_batches_tracked``; DataParallel's ``module.`` prefix; the BagNet
reference layout from an independent transcription). Downloads go to a local HTTP server
laid out like the real sources (MILSIL_WEIGHTS_MIRROR); nothing leaves this machine.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path

import pytest
import reference_bagnet as ref
import torch
import torchvision

from milsil.errors import CheckpointError, MilsilError, UnavailableHereError
from milsil.models import create_model
from milsil.models import pretrained as pt


def arbitrary(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The same keys with arbitrary values, so that 'equal after loading' means something."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=gen) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=gen)
    return out


def old_densenet_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's 2017 DenseNet file names (``norm.1``) and no ``num_batches_tracked``."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(.*)$")
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        m = pattern.match(k)
        out[f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else k] = v
    return out


def assert_backbone_equal(model, state: dict[str, torch.Tensor], classifier: str) -> None:
    own = model.backbone.state_dict()
    loaded = 0
    for k, v in state.items():
        if k.startswith(classifier) or k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(own[k], v), k
        loaded += 1
    assert loaded == len([k for k in own if not k.endswith("num_batches_tracked")])


def test_resnet50_torchvision_layouts_load_every_tensor(tmp_path):
    state = arbitrary(torchvision.models.resnet50(weights=None).state_dict())
    variants = {
        "current.pth": state,
        "module.pth": {f"module.{k}": v for k, v in state.items()},
        "wrapped.pth.tar": {"state_dict": state, "epoch": 90},
        # the 2017 file (resnet50-19c8e357.pth) predates num_batches_tracked
        "old.pth": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
    }
    for name, content in variants.items():
        torch.save(content, tmp_path / name)
        model = create_model(
            "resnet50", num_classes=2, head="milsil", width=64, pretrained=tmp_path / name
        )
        assert_backbone_equal(model, state, "fc.")
        assert model.fc.weight.shape == (2, 2048)  # the ImageNet classifier is dropped


def test_densenet161_current_and_published_layouts_load_every_tensor(tmp_path):
    state = arbitrary(torchvision.models.densenet161(weights=None).state_dict())
    assert "features.denseblock1.denselayer1.norm1.weight" in state
    old = old_densenet_layout(state)
    assert "features.denseblock1.denselayer1.norm.1.weight" in old  # the published names
    assert "classifier.weight" in old
    for name, content in (("current.pth", state), ("densenet161-old.pth", old)):
        torch.save(content, tmp_path / name)
        model = create_model(
            "densenet161", num_classes=2, head="milsil", width=64, pretrained=tmp_path / name
        )
        assert_backbone_equal(model, state, "classifier.")


@pytest.mark.parametrize("arch", ["bagnet9", "bagnet33"])
def test_bagnet_reference_layout_loads_every_tensor(tmp_path, arch):
    state = ref.random_state(arch, width=64)
    path = tmp_path / f"{arch}.pth.tar"
    torch.save(state, path)
    model = create_model(arch, num_classes=2, head="milsil", width=64, pretrained=path)
    assert_backbone_equal(model, state, "fc.")


def test_wrong_files_are_refused_with_one_line(tmp_path):
    path = tmp_path / "bagnet17.pth"
    torch.save(ref.random_state("bagnet17", width=8), path)
    with pytest.raises(CheckpointError, match="does not match bagnet9 width 8"):
        create_model("bagnet9", 2, width=8, pretrained=path)
    with pytest.raises(MilsilError, match="not found.*'imagenet', 'none' or a local file"):
        create_model("bagnet9", 2, width=8, pretrained=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read pretrained weights"):
        create_model("bagnet9", 2, width=8, pretrained=tmp_path / "junk.pth")
    with pytest.raises(MilsilError, match="width 64 only"):
        create_model("bagnet9", 2, width=8, pretrained="imagenet")
    with pytest.raises(MilsilError, match="no published ImageNet weights"):
        create_model("admil", 2, width=64, pretrained="imagenet")
    assert create_model("bagnet9", 2, width=8, pretrained="none") is not None


def test_published_sources():
    """BagNet: the official release's files; torchvision: its weights API, hash in name."""
    for arch, name in (
        ("bagnet9", "bagnet8-34f4ccd2.pth.tar"),
        ("bagnet17", "bagnet16-105524de.pth.tar"),
        ("bagnet33", "bagnet32-2ddd53ed.pth.tar"),
    ):
        source = pt.source_for(arch)
        assert source.url.startswith(
            "https://github.com/wielandbrendel/bag-of-local-features-models/releases/download/"
        )
        assert source.filename == name and source.hash_prefix is None  # structure checked
    rn = pt.source_for("resnet50")
    assert rn.url == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert rn.filename == "resnet50-0676ba61.pth" and rn.hash_prefix == "0676ba61"
    dn = pt.source_for("densenet161")
    assert dn.url == torchvision.models.DenseNet161_Weights.IMAGENET1K_V1.url
    assert dn.hash_prefix == "8d451a50"


# --------------------------------------------------------------------- downloads


class _Mirror:
    """A local HTTP server over a folder laid out like download.pytorch.org / github.com."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802 - http.server's name
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def put(self, url: str, data: bytes) -> Path:
        """Serve ``data`` at the path of the real ``url``."""
        path = self.root / url.split("://", 1)[1].split("/", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    server = _Mirror(tmp_path / "www")
    monkeypatch.setenv(pt.MIRROR_ENV, server.url)
    yield server
    server.close()


def _bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_imagenet_bagnet_downloads_once_into_the_hub_cache(mirror):
    state = ref.random_state("bagnet9", width=64, tracked=False)
    mirror.put(pt.source_for("bagnet9").url, _bytes(state))
    model = create_model("bagnet9", 2, width=64, pretrained="imagenet")
    assert_backbone_equal(model, state, "fc.")
    cached = pt.cache_dir() / "bagnet8-34f4ccd2.pth.tar"
    assert cached.is_file() and str(cached).startswith(str(torch.hub.get_dir()))
    assert len(mirror.requests) == 1
    assert mirror.requests[0].endswith(
        "/wielandbrendel/bag-of-local-features-models/releases/download/1.0/bagnet8-34f4ccd2.pth.tar"
    )
    create_model("bagnet9", 2, width=64, pretrained="imagenet")
    assert len(mirror.requests) == 1  # the second time comes from the cache


def test_corrupted_or_foreign_downloads_are_refused(mirror):
    good = _bytes(ref.random_state("bagnet17", width=64))
    mirror.put(pt.source_for("bagnet17").url, good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match="cannot read.*removed from the cache"):
        create_model("bagnet17", 2, width=64, pretrained="imagenet")
    assert not (pt.cache_dir() / "bagnet16-105524de.pth.tar").exists()
    # a readable file of the wrong model (BagNet-9 served as BagNet-33) is refused too
    mirror.put(pt.source_for("bagnet33").url, _bytes(ref.random_state("bagnet9", width=64)))
    with pytest.raises(CheckpointError, match="not the published bagnet33"):
        create_model("bagnet33", 2, width=64, pretrained="imagenet")
    assert not (pt.cache_dir() / "bagnet32-2ddd53ed.pth.tar").exists()
    # torchvision files carry their sha256 prefix in the name: anything else is refused
    mirror.put(pt.source_for("resnet50").url, b"corrupted" * 1000)
    with pytest.raises(CheckpointError, match="fails the published hash check"):
        create_model("resnet50", 2, width=64, pretrained="imagenet")
    assert not list(pt.cache_dir().glob("resnet50*"))  # nothing half-written either


def test_hash_checked_download_accepts_the_published_file(mirror):
    data = _bytes({"w": torch.arange(5.0)})
    prefix = hashlib.sha256(data).hexdigest()[:8]
    url = f"https://download.pytorch.org/models/tiny-{prefix}.pth"
    mirror.put(url, data)
    source = pt.Source(url, prefix, "test")
    path = pt.download(source)
    assert path == pt.cache_dir() / f"tiny-{prefix}.pth" and path.read_bytes() == data
    path.write_bytes(data[:-1])  # a cached file that went bad is caught when read again
    with pytest.raises(CheckpointError, match="hash check"):
        pt.download(source)


def test_offline_imagenet_fails_with_one_line_naming_url_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(pt.MIRROR_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(UnavailableHereError) as info:
        create_model("resnet50", 2, width=64, pretrained="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert f"http://127.0.0.1:{port}/models/resnet50-0676ba61.pth" in message
    assert "--pretrained FILE" in message
    with pytest.raises(UnavailableHereError, match="pretrained 'none'"):
        pt.probe("densenet161", timeout=2)
