#!/usr/bin/env bash
# Install the Debian 12 packages plait builds and tests with, if any is missing.
# Safe to run repeatedly; does nothing when everything is present.
set -euo pipefail
pkgs=(gcc make cmake pkg-config libmbedtls-dev libprotobuf-c-dev protobuf-c-compiler
      libuv1-dev libsqlite3-dev check)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
