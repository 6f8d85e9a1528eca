"""The ``milsil`` command line: one sub-command per job.

Each command (or group of commands) has a module, here or in the part it drives
(``milsil.client.cli``, ``milsil_server.cli``), that exposes ``register_cli(subparsers)``:
it adds its parsers and sets ``func`` to a function taking the parsed arguments and
returning an exit code. Bad input (:class:`MilsilError`) is printed as one line, never as
a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from milsil.errors import MilsilError

# Modules that contribute sub-commands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "milsil.cli.synth",
    "milsil.cli.train",
    "milsil.cli.evaluate",
    "milsil.cli.heatmap",
    "milsil.cli.objects",
    "milsil.cli.slides",
    "milsil.cli.reproduce",
    "milsil.cli.demo",
    "milsil.client.cli",
    "milsil.cli.qupath",
    "milsil_server.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="milsil",
        description="MIL-SIL BagNet: weakly supervised histology classification with exact logit heatmaps.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # That part (or its parent package) is not in this build: leave its command out.
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        module.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MilsilError as exc:
        print(f"milsil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"milsil {args.command}: interrupted", file=sys.stderr)
        return 130


def standalone(register: Callable[[Any], None], argv: list[str] | None) -> int:
    """Run one command without the full CLI, for a module's ``python -m`` / ``torchrun -m``
    entry (``torchrun -m milsil.cli.slides``): ``register`` adds that command's parser."""
    parser = argparse.ArgumentParser(prog="milsil")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    command = sub.choices and next(iter(sub.choices))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except MilsilError as exc:
        print(f"milsil {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
