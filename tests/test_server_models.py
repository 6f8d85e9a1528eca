"""ModelService over a real channel: list/get/delete, export/import round trip, bad checkpoints."""

from __future__ import annotations

import grpc
import pytest
import torch
from server_support import register_tiny_model, running_server

from milsil.client import MilsilClient
from milsil.models import load_checkpoint


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("srv")) as server:
        register_tiny_model(server, "tiny")
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=30)
        yield server, client
        client.close()


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_list_and_get(env):
    _, client = env
    models = client.list_models()
    assert [m.name for m in models] == ["models/tiny"]
    model = client.get_model("models/tiny")
    assert model.arch == "bagnet9" and model.receptive_field == 9 and model.width == 8
    # The context clients send around a region (the tiled engine's rule, checked here
    # independently of it), in ListModels and GetModel alike.
    assert model.context_pixels == model.receptive_field // 2 == 4
    assert models[0].context_pixels == models[0].receptive_field // 2
    assert list(model.class_names) == ["benign", "malignant"] and model.patch_size == 32
    assert model.target_class == "malignant"
    assert len(model.sha256) == 64 and model.size_bytes > 0 and model.create_time.seconds > 0
    assert client.get_model("tiny").name == "models/tiny"  # bare ids accepted


def test_export_import_roundtrip_and_delete(env, tmp_path):
    server, client = env
    exported = tmp_path / "tiny.pt"
    meta = client.export_model("models/tiny", exported, chunk_size=4096)
    assert meta.name == "models/tiny" and exported.stat().st_size == meta.size_bytes
    original = load_checkpoint(server.store.model_path("tiny"))
    copy = client.import_model(exported, model_id="copy", display_name="a copy", chunk_size=5000)
    assert (
        copy.name == "models/copy" and copy.sha256 == meta.sha256 and copy.display_name == "a copy"
    )
    reloaded = load_checkpoint(server.store.model_path("copy"))
    for (k, a), (_, b) in zip(
        original.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    auto = client.import_model(exported)
    assert auto.model_id.startswith("model-")
    code, details = _code(lambda: client.import_model(exported, model_id="copy"))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    # Paging.
    page = client.models.ListModels(
        __import__("milsil.v1.model_service_pb2", fromlist=["x"]).ListModelsRequest(page_size=2)
    )
    assert len(page.models) == 2 and page.next_page_token
    assert {m.name for m in client.list_models(page_size=1)} == {
        "models/tiny",
        "models/copy",
        auto.name,
    }
    client.delete_model("models/copy")
    client.delete_model(auto.name)
    assert not server.store.model_path("copy").exists()
    assert _code(lambda: client.get_model("models/copy"))[0] == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.delete_model("models/copy"))[0] == grpc.StatusCode.NOT_FOUND


def test_bad_imports_and_names(env, tmp_path):
    server, client = env
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    code, details = _code(lambda: client.import_model(garbage, model_id="bad"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "checkpoint" in details
    # A pickle that is not weights-only is refused, never executed.
    evil = tmp_path / "evil.pt"
    torch.save({"format": "milsil-checkpoint", "obj": object()}, evil)
    code, details = _code(lambda: client.import_model(evil, model_id="evil"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert _code(lambda: client.import_model(empty))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, details = _code(lambda: client.import_model(garbage, model_id="Bad/ID"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    for name in ("", "models/", "models/../../x", "jobs/x/y", "models/" + "a" * 64):
        code, details = _code(lambda name=name: client.get_model(name))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
    assert _code(lambda: client.export_model("models/tiny", tmp_path / "x", chunk_size=-1))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    from milsil.v1 import model_service_pb2

    code, _ = _code(
        lambda: client.models.ListModels(model_service_pb2.ListModelsRequest(page_token="zz"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not list((server.store.root / "tmp").glob("import-*")), (
        "failed imports must leave no files"
    )
    assert client.health() == "SERVING"


def test_target_class_is_malignant_else_the_last(tmp_path):
    with running_server(tmp_path) as server:
        register_tiny_model(server, "three", classes=("normal", "tumour", "stroma"))
        with MilsilClient(f"127.0.0.1:{server.port}") as client:
            assert client.get_model("models/three").target_class == "stroma"
