"""Opening whole slide images and reading their pixels.

Everything in :mod:`milsil.wsi` speaks level-0 (full resolution) pixel coordinates,
top-left origin, y down, as QuPath and OpenSlide do; a ``downsample`` travels with every
region. :class:`Slide` wraps OpenSlide (every format it reads: Aperio, Hamamatsu, MIRAX,
Leica, Philips, Ventana, DICOM, generic tiled TIFF, ...). A corrupt or unsupported file
raises one :class:`MilsilError` line, never a library traceback; transparent pixels and
pixels outside the slide read as white glass.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from milsil.errors import MilsilError, NotFoundError
from milsil.wsi.settings import check_downsample

# File types OpenSlide reads (a DICOM slide is a folder of .dcm files; any one opens it).
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
)


def _openslide():
    try:
        import openslide
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise MilsilError(
            f"reading slides needs openslide-python and openslide-bin ({exc}); "
            "pip install openslide-python openslide-bin"
        ) from None
    return openslide


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class Slide:
    """An open whole slide image. Use as a context manager or call :meth:`close`.

    ``dimensions`` is level-0 ``(width, height)``; ``mpp`` the level-0 pixel size in
    microns ``(x, y)`` when the file records it (else ``None``).
    """

    def __init__(self, path: str | Path) -> None:
        openslide = _openslide()
        self.path = Path(path)
        if not self.path.exists():
            raise NotFoundError(f"slide not found: {self.path}")
        if self.path.is_dir():
            raise MilsilError(
                f"{self.path} is a folder; give a slide file "
                f"({', '.join(SLIDE_SUFFIXES)}; for DICOM any one .dcm of the series)"
            )
        try:
            fmt = openslide.OpenSlide.detect_format(str(self.path))
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot read"
            raise MilsilError(f"{self.path.name}: cannot read: {_one_line(exc)}") from None
        if fmt is None:
            raise MilsilError(
                f"{self.path.name}: not a slide format OpenSlide reads (Aperio, Hamamatsu, "
                "MIRAX, Leica, Philips, Ventana, Zeiss, DICOM, generic tiled TIFF)"
            )
        try:
            self._slide = openslide.OpenSlide(str(self.path))
            # Reading one pixel finds truncated or corrupt files now, not mid-run.
            self._slide.read_region((0, 0), self._slide.level_count - 1, (1, 1))
        except Exception as exc:  # noqa: BLE001
            raise MilsilError(
                f"{self.path.name}: corrupt or unsupported {fmt} slide: {_one_line(exc)}"
            ) from None
        self.format = fmt
        self.dimensions: tuple[int, int] = tuple(self._slide.dimensions)  # type: ignore[assignment]
        self.level_count = int(self._slide.level_count)
        self.level_dimensions = [tuple(d) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        props = self._slide.properties
        self.properties = dict(props)
        try:
            self.mpp: tuple[float, float] | None = (
                float(props["openslide.mpp-x"]),
                float(props["openslide.mpp-y"]),
            )
        except (KeyError, ValueError):
            self.mpp = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({self.path.name!r}, {self.format}, {w}x{h}, {self.level_count} levels)"

    # ------------------------------------------------------------------ geometry

    def region_size(self, downsample: float = 1.0) -> tuple[int, int]:
        """``(width, height)`` of the whole slide seen at ``downsample`` (whole pixels)."""
        ds = check_downsample(downsample)
        w, h = self.dimensions
        return max(1, int(w // ds)), max(1, int(h // ds))

    def read(self, x: int, y: int, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
        """RGB ``uint8 [height, width, 3]`` of output pixels at ``downsample``.

        ``(x, y)`` is the level-0 top-left; the region covers level-0
        ``[x, x + width*downsample)``. Pixels outside the slide, and transparent ones, are
        white (glass). Read from a level and, when none matches, shrunk from it by area
        averaging (:func:`milsil.data.shrink`; a level is itself an area average of level
        0): for a whole ``downsample`` the deepest level it is a whole multiple of (3 from
        level 0 when the levels are 1, 2, 4: the 3 x 3 means an image file gets), for
        another one the deepest level not above it.
        """
        ds = check_downsample(downsample)
        if width < 1 or height < 1:
            raise MilsilError(f"region size must be positive, got {width}x{height}")
        level = self._slide.get_best_level_for_downsample(ds * 1.001)
        if abs(ds - round(ds)) < 1e-9:
            # A block mean of block means is a block mean only at whole ratios: for a whole
            # downsample, read the deepest level it is a whole multiple of (level 0 at
            # worst), so the pixels are exact block means of level 0, as an image file's.
            while level > 0 and not _whole(ds / self.level_downsamples[level]):
                level -= 1
        lds = self.level_downsamples[level]
        lw = max(1, math.ceil(width * ds / lds - 1e-6))
        lh = max(1, math.ceil(height * ds / lds - 1e-6))
        try:
            rgba = np.asarray(self._slide.read_region((int(x), int(y)), level, (lw, lh)))
        except Exception as exc:  # noqa: BLE001
            raise MilsilError(
                f"{self.path.name}: cannot read region ({x}, {y}) {lw}x{lh} at level {level}: "
                f"{_one_line(exc)}"
            ) from None
        rgb = _composite_white(rgba)
        if (lw, lh) != (width, height):
            from milsil.data import shrink

            ratio = ds / lds
            rgb = shrink(rgb, width, height, round(ratio) if _whole(ratio) else ratio)
        return rgb

    def thumbnail(self, downsample: float) -> np.ndarray:
        """The whole slide at ``downsample`` (RGB, glass white)."""
        w, h = self.region_size(downsample)
        return self.read(0, 0, w, h, downsample)


def open_slide(path: str | Path) -> Slide:
    """Open a slide; :class:`MilsilError` with one line for a corrupt or unsupported file."""
    return Slide(path)


def _whole(ratio: float) -> bool:
    """A ratio of downsamples that is a whole number (levels' downsamples are not exact:
    OpenSlide divides level sizes)."""
    return abs(ratio - round(ratio)) < 1e-3


def _composite_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (OpenSlide, not premultiplied) over white: transparent = glass."""
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        return np.ascontiguousarray(rgba[..., :3])
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
