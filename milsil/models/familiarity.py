"""The training distribution that travels with a model: how familiar an input is.

A model trained on one lab's H&E is shown whatever a user selects: another stain, a
blank slide, pen marks, the wrong magnification. Its logits say nothing about that (the
model trained by ``make demo`` answered "malignant" with logits up to 258 on an IHC
image), so the check is made on the model's own features instead.

The statistic (chosen by measurement, ``bench/ood_bench.py``, numbers in the README):
every receptive-field window of a BagNet has a feature vector ``f`` (``D`` channels, the
input of the classifier). At the end of training the features of the training bags'
windows are projected onto their top ``K`` principal components, grouped by the class
the model predicts for the window, and whitened with the pooled within-class covariance
(Lee et al. 2018's tied class-conditional Gaussians, in a K-dimensional subspace). The
per-window distance is the squared Mahalanobis distance to the nearest class centre,
divided by ``K``. The projection is one affine map ``z = W f + b``, so the dense heatmap
pass gets it as ``K`` extra rows beside the classifier's 1x1 convolution, at the cost of
``K`` more output channels.

A region's score is the mean distance of its windows, expressed as how many spreads it
lies above the typical training image (``(mean - typical) / spread``, the mean and
standard deviation of that mean over the training images): 0 is a typical image, and
the threshold reads in the same unit whatever the model. A mean streams band by band,
and a shifted area raises it in proportion to the share of the region it covers.

Measured alternatives (README, "Trust: unlike the training data"): a two-sided
typicality test on the same mean (Nalisnick et al. 2019: ``|mean - typical| / spread``;
blur, x2 magnification and strong stain variation make windows look *more* typical, so
it catches those better, but it loses grayscale and blank glass, whose means land near
the typical value: no better on average); the Mahalanobis distance of the region's mean
feature (the best separation measured, but a region's score then needs its ``K``-vector
mean, not one channel per sample: a contract change, left as the next step); and the
energy score ``-logsumexp(logits)`` (logits grow on shifted inputs as often as they
shrink: the demo model answered an IHC image with logits up to 258).

The threshold is calibrated on held-out patients of the training data (the validation
split, else a patient-level split of the training patients): the score that about 5% of
their images exceed. The reference records how many patients and images that was and
the false-alarm rate it gave.

Attention MIL and backbones without a bounded receptive field have no reference: their
features are whole-bag embeddings with no per-window map (``None``, documented).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from milsil.errors import CheckpointError, MilsilError

FAMILIARITY_KEY = "familiarity"  # checkpoint payload key (plain values + tensors)
DEFAULT_COMPONENTS = 32  # K: principal components kept (at most the feature width)
FALSE_ALARM_TARGET = 0.05  # share of held-out in-distribution images above the threshold
_ATTRIBUTE = "familiarity_reference"


@dataclass(frozen=True)
class FamiliarityReference:
    """What travels with the model: the whitened projection, class centres, threshold.

    ``weight`` ``[K, D]`` and ``bias`` ``[K]`` map a window's feature to the whitened space
    (mean and whitening folded in); ``centres`` ``[M, K]`` are the class centres there (the
    classes the model predicted on training windows). ``typical`` and ``spread``: the mean
    and standard deviation over training images of an image's mean window distance (the
    region score is how many spreads a region's mean lies above ``typical``).
    ``calibration``: how the threshold
    was set (patients, images, false-alarm rate, split); ``fit``: what the projection was
    fitted on (images, windows). Plain values only, so a checkpoint loads with
    ``weights_only``.
    """

    method: str
    threshold: float
    weight: torch.Tensor
    bias: torch.Tensor
    centres: torch.Tensor
    typical: float = 1.0
    spread: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    @property
    def components(self) -> int:
        return int(self.weight.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.weight.shape[1])

    def project(self, features: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Features with ``D`` channels on axis ``dim`` -> their ``K`` whitened coordinates."""
        f = features.movedim(dim, -1).float()
        w, b = self.weight.to(f.device), self.bias.to(f.device)
        return (f @ w.T + b).movedim(-1, dim)

    def distances(self, projected: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Whitened coordinates (``K`` on axis ``dim``) -> per-sample distance (that axis
        removed): squared Mahalanobis distance to the nearest class centre, over ``K``."""
        z = projected.movedim(dim, -1).float()
        centres = self.centres.to(z.device)
        d = ((z.unsqueeze(-2) - centres) ** 2).sum(dim=-1)  # [..., M]
        return d.min(dim=-1).values / self.components

    def distance_channel(self, out: torch.Tensor, classes: int) -> torch.Tensor:
        """A dense pass's ``[C + K, h, w]`` (logits, then the projection) -> ``[C + 1, h, w]``
        (logits, then the per-sample distance)."""
        return torch.cat([out[:classes], self.distances(out[classes:])[None]])

    def region_score(self, mean_distance: float) -> float:
        """A region's score from its mean window distance: how many training-image spreads
        it lies above the typical training image, ``(mean - typical) / spread``."""
        return (float(mean_distance) - self.typical) / self.spread

    def to_payload(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "threshold": float(self.threshold),
            "typical": float(self.typical),
            "spread": float(self.spread),
            "weight": self.weight.detach().cpu().float().clone(),
            "bias": self.bias.detach().cpu().float().clone(),
            "centres": self.centres.detach().cpu().float().clone(),
            "calibration": dict(self.calibration),
            "fit": dict(self.fit),
        }

    @classmethod
    def from_payload(cls, raw: dict, name: str) -> FamiliarityReference:
        """The reference a checkpoint holds, checked; :class:`CheckpointError` naming
        ``name`` and what is wrong otherwise."""

        def bad(why: str) -> CheckpointError:
            return CheckpointError(f"{name} has an invalid '{FAMILIARITY_KEY}' entry: {why}")

        if not isinstance(raw, dict):
            raise bad(f"expected a mapping, got {type(raw).__name__}")
        required = ("method", "threshold", "typical", "spread", "weight", "bias", "centres")
        missing = [k for k in required if k not in raw]
        if missing:
            raise bad(f"missing {', '.join(missing)}")
        weight, bias, centres = raw["weight"], raw["bias"], raw["centres"]
        tensors = {"weight": weight, "bias": bias, "centres": centres}
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise bad(f"{key} must be a float tensor")
            if not torch.isfinite(value).all():
                raise bad(f"{key} holds NaN or infinite values")
        if weight.ndim != 2 or weight.shape[0] < 1:
            raise bad(f"weight must be [K, D], got {tuple(weight.shape)}")
        k = weight.shape[0]
        if tuple(bias.shape) != (k,):
            raise bad(f"bias must be [{k}], got {tuple(bias.shape)}")
        if centres.ndim != 2 or centres.shape[1] != k or centres.shape[0] < 1:
            raise bad(f"centres must be [M, {k}], got {tuple(centres.shape)}")
        numbers = {}
        for key in ("threshold", "typical", "spread"):
            try:
                numbers[key] = float(raw[key])
            except (TypeError, ValueError):
                raise bad(f"{key} must be a number, got {raw[key]!r}") from None
            if not math.isfinite(numbers[key]):
                raise bad(f"{key} must be finite")
        if numbers["spread"] <= 0:
            raise bad(f"spread must be positive, got {numbers['spread']}")
        calibration, fit = raw.get("calibration", {}), raw.get("fit", {})
        if not isinstance(calibration, dict) or not isinstance(fit, dict):
            raise bad("calibration and fit must be mappings")
        return cls(
            method=str(raw["method"]),
            threshold=numbers["threshold"],
            typical=numbers["typical"],
            spread=numbers["spread"],
            weight=weight.float(),
            bias=bias.float(),
            centres=centres.float(),
            calibration=dict(calibration),
            fit=dict(fit),
        )


def supports_familiarity(model: torch.nn.Module) -> bool:
    """Whether ``model`` has per-window features (a BagNet under one linear classifier)."""
    from milsil.models.bagnet import BagNet
    from milsil.models.mil import MilSilNet

    return isinstance(model, MilSilNet) and isinstance(model.backbone, BagNet)


def model_familiarity(model: torch.nn.Module) -> FamiliarityReference | None:
    """The model's reference; None for a model trained before it existed, or ADMIL."""
    return model.__dict__.get(_ATTRIBUTE)


def set_model_familiarity(model: torch.nn.Module, reference: FamiliarityReference | None) -> None:
    """Attach ``reference`` to ``model`` (None removes it); checks it fits the model."""
    if reference is not None:
        if not supports_familiarity(model):
            raise MilsilError(
                f"{model.config.arch} has no per-window features: a familiarity reference "
                "needs a BagNet (bagnet9, bagnet17, bagnet33)"
            )
        width = model.fc.in_features
        if reference.feature_dim != width:
            raise CheckpointError(
                f"the familiarity reference expects {reference.feature_dim} feature channels; "
                f"this {model.config.arch} has {width}"
            )
    model.__dict__[_ATTRIBUTE] = reference


def payload_familiarity(payload: dict[str, Any], name: str) -> FamiliarityReference | None:
    """The reference a checkpoint payload holds; None when it has none (old checkpoints)."""
    raw = payload.get(FAMILIARITY_KEY)
    return None if raw is None else FamiliarityReference.from_payload(raw, name)


# ---------------------------------------------------------------------------- fitting


def fit_projection(
    features: torch.Tensor, classes: torch.Tensor, components: int = DEFAULT_COMPONENTS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weight [K, D], bias [K], centres [M, K])`` from training windows' features
    ``[N, D]`` and the class the model predicts for each (``[N]``).

    PCA to ``K`` components of the total covariance, then whitening by the pooled
    within-class covariance in that subspace (tied Gaussians), so the distance to a centre
    counts every direction by its spread around its own class.
    """
    if features.ndim != 2 or len(features) < 2:
        raise MilsilError(f"fitting needs at least 2 feature vectors [N, D], got {features.shape}")
    n, width = features.shape
    k = max(1, min(components, width, n - 1))
    mean = features.double().mean(dim=0)
    cov = torch.zeros(width, width, dtype=torch.float64)
    for start in range(0, n, 8192):  # float64 a chunk at a time: no double copy of all
        part = features[start : start + 8192].double() - mean
        cov += part.T @ part
    _, vectors = torch.linalg.eigh(cov / (n - 1))
    basis = vectors[:, -k:].flip(1)  # [D, K], largest variance first
    y = torch.cat([(features[s : s + 8192].double() - mean) @ basis for s in range(0, n, 8192)])
    labels = classes.long()
    present = torch.unique(labels)
    means = torch.stack([y[labels == c].mean(dim=0) for c in present])
    within = y - means[torch.searchsorted(present, labels)]
    scatter = within.T @ within / max(1, len(y) - len(present))
    values, vecs = torch.linalg.eigh(scatter)
    values = values.clamp_min(values.max().clamp_min(1e-12) * 1e-6)
    whiten = vecs @ torch.diag(values.rsqrt()) @ vecs.T  # symmetric inverse square root
    weight = whiten @ basis.T  # [K, D]
    bias = -(weight @ mean)
    centres = means @ whiten.T
    return weight.float(), bias.float(), centres.float()


def calibrated_threshold(scores: list[float]) -> tuple[float, float]:
    """``(threshold, false-alarm rate)``: the lowest held-out image score that at most
    :data:`FALSE_ALARM_TARGET` of the held-out images exceed, and the share that do (with
    fewer than 20 images that is the highest score: no false alarm on them)."""
    if not scores:
        raise MilsilError("calibrating a familiarity threshold needs at least one image")
    values = sorted(float(s) for s in scores)
    threshold = values[math.ceil((1.0 - FALSE_ALARM_TARGET) * len(values) - 1e-9) - 1]
    return threshold, sum(v > threshold for v in values) / len(values)
