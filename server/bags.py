"""ClassifyBag: a bag of tiles in, per-tile (SIL) and bag (MIL) probabilities out.

The stream's tiles are decoded under the bag limits (:func:`bag_request`), the model
runs under a compute slot (:func:`classify_tiles`, checking ``is_active`` between chunks so
a cancelled call stops within about a second), and the result becomes the response,
with how like the training data each tile and the bag were (the library's ``bag_pass``:
the classifier's features and the windows' distances from one backbone pass, then
``bag_familiarity``; ``available = false`` for a model without training statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from milsil.data.images import to_tensor
from milsil.data.stain import apply_stain, bag_stain
from milsil.errors import MilsilError
from milsil.inference.familiarity import FamiliarityScore, Stopped, bag_familiarity, bag_pass
from milsil.inference.precision import fp32_precision, mode_arithmetic
from milsil.v1 import inference_service_pb2

from .auth import client_of
from .errors import Cancelled, ResourceExhausted
from .messages import decode, familiarity, warn_unlike
from .resources import Limits, Resources


def classify_bag_rpc(res: Resources, requests: Iterable[Any], context: Any) -> Any:
    """The ClassifyBag RPC."""
    model_name, tiles = bag_request(requests, res.limits)
    ident, model = res.model(model_name, "model")
    model.check_tiles(tiles)  # a malformed bag never waits for, or takes, a compute slot
    with res.slots.acquire(context.is_active, client_of(context), context.peer()) as device:
        on_device = res.on_device(model, device)
        precision, _ = mode_arithmetic(res.precision)  # float32 always: bf16 is for heatmaps
        result = classify_tiles(on_device, tiles, context.is_active, precision=precision)
    judged = bag_familiarity(model, tiles, result["distances"])  # from the same pass
    tile_scores, bag = judged if judged is not None else ([None] * len(tiles), None)
    warn_unlike(f"ClassifyBag models/{ident} bag of {len(tiles)} tiles", bag)
    return classify_bag_response(ident, model.class_names, result, tile_scores, bag)


def bag_request(requests: Iterable[Any], limits: Limits) -> tuple[str, list[np.ndarray]]:
    """ClassifyBagRequest messages -> (model name, decoded tiles)."""
    model_name = None
    tiles: list[np.ndarray] = []
    pixels = 0
    for n, request in enumerate(requests):
        if n == 0:
            model_name = request.model
        elif request.model and request.model != model_name:
            raise MilsilError("model may only be set in the first message (or repeated unchanged)")
        for tile in request.tiles:
            where = f"tiles[{len(tiles)}]"
            if len(tiles) >= limits.max_bag_tiles:
                raise ResourceExhausted(f"a bag may have at most {limits.max_bag_tiles} tiles")
            pixels += max(tile.width, 0) * max(tile.height, 0)
            if pixels > limits.max_bag_pixels:
                raise ResourceExhausted(f"a bag may hold at most {limits.max_bag_pixels} pixels")
            tiles.append(decode(tile, where, limits))
    if model_name is None:
        raise MilsilError("empty stream: the first ClassifyBagRequest must name the model")
    return model_name, tiles


def classify_bag_response(
    model_id: str,
    classes: list[str],
    result: dict[str, Any],
    tile_scores: list[FamiliarityScore | None],
    bag: FamiliarityScore | None,
) -> inference_service_pb2.ClassifyBagResponse:
    """The probabilities, each tile's familiarity (``tile_scores``, in tile order) and
    the bag's."""
    response = inference_service_pb2.ClassifyBagResponse(
        model=f"models/{model_id}",
        class_names=classes,
        bag_logits=result["mil_logits"],
        bag_probabilities=result["mil_probabilities"],
        attention=result["attention"],
        predicted_class=classes[int(np.argmax(result["mil_probabilities"]))],
        familiarity=familiarity(bag),
    )
    if result["sil_logits"] is not None:
        for i, (lg, pr, judged) in enumerate(
            zip(result["sil_logits"], result["sil_probabilities"], tile_scores, strict=True)
        ):
            response.tiles.add(
                index=i, logits=lg, probabilities=pr, familiarity=familiarity(judged)
            )
    return response


def classify_tiles(
    model: torch.nn.Module,
    tiles: list[np.ndarray],
    is_active: Callable[[], bool],
    chunk: int = 64,
    precision: str = "exact",
) -> dict[str, object]:
    """SIL (per tile) and MIL (bag) logits/probabilities of one bag of equally sized tiles
    (checked by the caller: ``model.check_tiles``, before it takes a compute slot), in
    float32 under :func:`~milsil.inference.precision.fp32_precision` (``precision``: the
    server's float32 mode, exact unless ``--tf32``)."""
    device = next(model.parameters()).device
    mean, std = model.normalization
    stain = bag_stain(model, tiles)  # the bag is one region (milsil.data.stain)
    result: dict[str, object] = {"attention": [], "distances": None}
    with torch.inference_mode(), fp32_precision(precision):
        if hasattr(model, "patch_features") and hasattr(model, "fc"):
            # One backbone pass: the classifier's features and the windows' familiarity.
            try:
                stop = lambda: not is_active()  # noqa: E731
                passed = bag_pass(model, tiles, stain, chunk, stop, precision)
            except Stopped:
                raise Cancelled(
                    "request cancelled or deadline exceeded; classification stopped"
                ) from None
            f, result["distances"] = passed.features, passed.distances
            sil = model.fc(f).float().cpu()
            mil = model.fc(f.mean(dim=0, keepdim=True))[0].float().cpu()
        else:
            x = to_tensor(apply_stain(np.stack(tiles), stain), mean, std).to(device)
            out = model(x.unsqueeze(0))
            sil = None if out.sil_logits is None else out.sil_logits[0].float().cpu()
            mil = out.mil_logits[0].float().cpu()
            if out.attention is not None:
                result["attention"] = out.attention[0].float().cpu().tolist()
    result["sil_logits"] = None if sil is None else sil.tolist()
    result["sil_probabilities"] = None if sil is None else torch.softmax(sil, dim=1).tolist()
    result["mil_logits"] = mil.tolist()
    result["mil_probabilities"] = torch.softmax(mil, dim=0).tolist()
    return result
