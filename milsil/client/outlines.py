"""The outline clean-up's flags, one table for ``milsil annotate-slide`` / ``batch`` (the
library on this machine) and ``milsil client annotate`` / ``annotate-slide`` (the server).

It lives in the torch-free client so both can import it: the library's commands pass the
measured defaults (:class:`milsil.wsi.outlines.OutlineSettings`) as the flags' defaults;
the client leaves a flag it was not given out of the request, and the server takes its
default. Either way a value given is used as is and 0 turns a step off;
:func:`outline_message` turns that into the contract's ``OutlineSettings`` message, where
0 means "the default" and a negative value "off".
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from milsil.errors import MilsilError
from milsil.v1 import inference_service_pb2

# (flag, OutlineSettings field, help).
_UNIT = "µm when the pixel size is known, else level-0 px"
OUTLINE_FLAGS = (
    ("--min-area", "min_area", "drop objects smaller than this (µm², else level-0 px²)"),
    ("--min-hole-area", "min_hole_area", "fill holes smaller than this (µm², else px²)"),
    (
        "--smooth-sigma",
        "smooth_sigma",
        f"Gaussian sigma on the map before thresholding, outlines only ({_UNIT})",
    ),
    ("--merge-distance", "merge_distance", f"join objects closer than this ({_UNIT})"),
    ("--simplify", "simplify", "simplification tolerance, a fraction of an output pixel, [0, 1)"),
)
OUTLINE_FIELDS = tuple(name for _, name, _ in OUTLINE_FLAGS)


def add_outline_arguments(
    parser: argparse.ArgumentParser,
    defaults: Mapping[str, float] | None = None,
    pixel_size_default: str = "the slide's metadata",
) -> None:
    """The outline flags and ``--pixel-size``. ``defaults``: each field's default (the
    library's measured ones); None: a flag not given stays None (the server's default)."""
    for flag, name, text in OUTLINE_FLAGS:
        default = None if defaults is None else defaults[name]
        shown = "the server's" if default is None else f"{default:g}"
        parser.add_argument(
            flag,
            dest=name,
            type=float,
            default=default,
            help=f"{text}; default {shown}; 0 turns it off",
        )
    parser.add_argument(
        "--pixel-size",
        type=float,
        default=0.0,
        help=f"level-0 µm per pixel for the outline settings (default: {pixel_size_default}; "
        "without it the settings are in pixels)",
    )


def outline_values(args: argparse.Namespace) -> dict[str, float]:
    """The outline flags given (a flag left at None is left out)."""
    return {name: getattr(args, name) for name in OUTLINE_FIELDS if getattr(args, name) is not None}


def outline_message(
    outline: Mapping[str, float] | None,
) -> inference_service_pb2.OutlineSettings | None:
    """The request's ``OutlineSettings`` from the library's values: a field given is used
    as is, 0 turning its step off (sent as -1, the contract's "off"); a field left out
    takes the server's default (sent as 0). None or empty: no message (every default)."""
    if not outline:
        return None
    unknown = sorted(set(outline) - set(OUTLINE_FIELDS))
    if unknown:
        raise MilsilError(
            f"unknown outline setting(s) {', '.join(unknown)}; allowed: {', '.join(OUTLINE_FIELDS)}"
        )
    message = inference_service_pb2.OutlineSettings()
    for name, value in outline.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MilsilError(f"outline {name} must be a number, got {value!r}")
        setattr(message, name, -1.0 if value == 0 else float(value))
    return message


def describe_outlines(collection: Mapping[str, object]) -> str:
    """One line saying which outline settings and units a GeoJSON's outlines used."""
    o = collection.get("outline_settings")
    if not isinstance(o, Mapping):
        return "outlines: no clean-up recorded"
    if o.get("units") == "um":
        units = f"µm ({o['pixel_size_um']:g} µm/px)"
    else:
        units = "pixels (no pixel size: fell back to pixels)"
    return (
        f"outlines: min area {o['min_area']:g}, min hole {o['min_hole_area']:g}, smooth "
        f"{o['smooth_sigma']:g}, merge {o['merge_distance']:g}, in {units}; simplify "
        f"{o['simplify']:g} of an output pixel"
    )
