#!/usr/bin/env bash
# Installs the system packages arcflow needs when they are missing (Debian/Ubuntu):
# OpenBLAS (OpenMP build, linked by explicit path), its headers, LLVM's libomp, and gcc.
set -euo pipefail
need=()
for pkg in libopenblas-dev libopenblas0-openmp libomp-dev gcc; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "arcflow setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v swift >/dev/null || { echo "arcflow setup: the Swift toolchain is required (swift not in PATH)" >&2; exit 1; }
