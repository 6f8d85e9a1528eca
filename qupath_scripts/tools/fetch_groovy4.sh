#!/usr/bin/env bash
# Fetch QuPath 0.6's Groovy (4.0.26) so the tests can run the scripts under the Groovy
# QuPath really uses, not only Debian's 2.4. The jar ships inside the npm package
# npm-groovy-lint@18.0.0; we `npm pack` it (no install, no scripts run) and extract only
# package/lib/java/groovy/lib/groovy-4.0.26.jar.
#
# Usage: qupath_scripts/tools/fetch_groovy4.sh [CACHE_DIR]
#   CACHE_DIR defaults to $MILSIL_GROOVY4_DIR, else ~/.cache/milsil/groovy4.
# Prints the jar's path. Idempotent: does nothing when the jar is already there.
set -euo pipefail

VERSION=4.0.26
PACKAGE=npm-groovy-lint@18.0.0
MEMBER=package/lib/java/groovy/lib/groovy-${VERSION}.jar
# SHA-256 of groovy-4.0.26.jar as shipped in npm-groovy-lint@18.0.0.
SHA256=ae3196ed31fa11e8506f9c40a6b34fdaff06a8eeda78a8a6ebaeb1a2a0ad35dc

cache="${1:-${MILSIL_GROOVY4_DIR:-${HOME}/.cache/milsil/groovy4}}"
jar="${cache}/groovy-${VERSION}.jar"
if [[ -s "${jar}" ]]; then
  echo "${jar}"
  exit 0
fi
command -v npm >/dev/null || { echo "fetch_groovy4: npm is not installed" >&2; exit 1; }
mkdir -p "${cache}"
work="$(mktemp -d "${cache}/.fetch.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
(cd "${work}" && npm pack --silent "${PACKAGE}" >/dev/null)
tarball="$(ls "${work}"/npm-groovy-lint-*.tgz)"
tar -xzf "${tarball}" -C "${work}" "${MEMBER}"
got="$(sha256sum "${work}/${MEMBER}" | cut -d' ' -f1)"
if [[ "${got}" != "${SHA256}" ]]; then
  echo "fetch_groovy4: checksum mismatch for ${MEMBER}: ${got}" >&2
  exit 1
fi
mv "${work}/${MEMBER}" "${jar}.part"
mv "${jar}.part" "${jar}"
echo "${jar}"
