"""``milsil qupath install``: the grpc-java jars, the scripts and the descriptor set into
QuPath's user directory, in one command (the logic: :mod:`milsil.client.qupath_setup`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from milsil.client import qupath_setup


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "qupath",
        help="set up QuPath for the milsil scripts (install)",
        description="Set up QuPath 0.6 for the milsil Groovy scripts.",
    )
    sub = p.add_subparsers(dest="qupath_command", metavar="ACTION", required=True)
    i = sub.add_parser(
        "install",
        help="jars into QuPath's extensions folder, scripts into its user scripts",
        description=(
            "Download the grpc-java jar set the scripts need (grpc-netty-shaded, so TLS works) "
            "into <user dir>/extensions, each checked against the strongest checksum the Maven "
            "repository publishes beside it (.sha512, .sha256, else .sha1), skipping jars already "
            "there; copy the scripts, lib/ and milsil_v1.desc into <user dir>/scripts/milsil "
            "(Automate > User scripts... > milsil). Rerunning is safe: what is there and checks "
            "out is skipped, a script you edited is kept as <name>.bak."
        ),
    )
    i.add_argument(
        "--qupath-user-dir",
        type=Path,
        metavar="DIR",
        help=(
            "QuPath's user directory (Edit > Preferences > Extensions > QuPath user directory); "
            "default QuPath 0.6's: ~/QuPath/v0.6 (%%USERPROFILE%%\\QuPath\\v0.6 on Windows)"
        ),
    )
    source = i.add_mutually_exclusive_group()
    source.add_argument(
        "--from",
        dest="jar_dir",
        type=Path,
        metavar="JAR_DIR",
        help=(
            "install the jars from this folder instead of downloading (sites without internet): "
            "the exact file names of the set (e.g. grpc-api-1.69.1.jar), flat or in Maven's "
            "layout; checked against .sha512/.sha256/.sha1 files beside them when present"
        ),
    )
    source.add_argument(
        "--maven-url",
        default=qupath_setup.MAVEN_CENTRAL,
        metavar="URL",
        help=f"Maven repository to download from (default {qupath_setup.MAVEN_CENTRAL})",
    )
    i.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="network timeout of each connection and read (default 60)",
    )
    i.set_defaults(func=_install)


def _install(args: argparse.Namespace) -> int:
    qupath_setup.install(
        user_dir=args.qupath_user_dir,
        jar_dir=args.jar_dir,
        maven_url=args.maven_url,
        timeout=args.timeout,
    )
    return 0
