#!/usr/bin/env bash
# Real vendor slide files for the slide tests: the tiny fixtures that openslide-python's
# source distribution ships (LGPL-2.1), taken from PyPI at set-up time rather than kept in
# this repository. Idempotent. Usage: tests/data/fetch_openslide_fixtures.sh [PIP]
set -euo pipefail
PIP="${1:-pip}"
VERSION=1.4.7
here="$(cd "$(dirname "$0")" && pwd)"
dest="${here}/openslide"
files=(small.svs boxes_0.dcm boxes_1.dcm boxes.tiff unreadable.svs unopenable.tiff)
missing=0
for f in "${files[@]}"; do [[ -s "${dest}/${f}" ]] || missing=1; done
[[ "${missing}" == 0 ]] && { echo "openslide fixtures: present in ${dest}"; exit 0; }
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
"${PIP}" download -q --no-deps --no-binary :all: "openslide-python==${VERSION}" -d "${work}"
members=()
for f in "${files[@]}"; do members+=("openslide_python-${VERSION}/tests/fixtures/${f}"); done
tar -xzf "${work}/openslide_python-${VERSION}.tar.gz" -C "${work}" "${members[@]}"
mkdir -p "${dest}"
cp "${work}/openslide_python-${VERSION}/tests/fixtures/"* "${dest}/"
echo "openslide fixtures: ${files[*]} -> ${dest}"
