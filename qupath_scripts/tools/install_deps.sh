#!/usr/bin/env bash
# Install what the Groovy/QuPath tests need on Debian/Ubuntu: Debian's Groovy (2.4),
# Debian's grpc-java with its runtime (protobuf-java, netty, guava, perfmark, gson), and a
# JDK (javac compiles the QuPath stand-in classes the script tests run against).
# Idempotent: exits at once when every package is already installed. Needs root (CI runs
# as root) or sudo.
set -euo pipefail

PACKAGES=(groovy libgrpc-java libprotobuf-java libnetty-java libguava-java libperfmark-java
  libgoogle-gson-java default-jdk-headless)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("${p}")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_deps: all present (${PACKAGES[*]})"
  exit 0
fi
command -v apt-get >/dev/null || { echo "install_deps: no apt-get; install ${missing[*]} by hand" >&2; exit 1; }
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  SUDO="sudo"
fi
echo "install_deps: installing ${missing[*]}"
${SUDO} apt-get update -qq
${SUDO} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
