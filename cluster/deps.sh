#!/usr/bin/env bash
# Installs what psrec needs to build and test, if it is missing (Debian/Ubuntu).
# Safe to run again: it only calls apt-get when a package is absent.
set -euo pipefail

PKGS=(build-essential cmake pkg-config
      libopenmpi-dev openmpi-bin
      libzmq3-dev
      protobuf-c-compiler libprotobuf-c-dev
      libopenblas-dev
      libxxhash-dev libinih-dev
      libcriterion-dev
      python3-numpy python3-faiss)   # tests/faiss_check.py (run with /usr/bin/python3)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "psrec: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "psrec: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
