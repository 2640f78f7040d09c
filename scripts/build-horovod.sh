#!/usr/bin/env bash
# Build Horovod 0.28.1 for the pinned PyTorch and cache the wheel outside the clone.
#
# Horovod's last release does not compile against PyTorch >= 2.1 as shipped (its CMake files ask for
# C++14; PyTorch's headers need C++17). We build the sdist with that one change, with Gloo and without
# MPI/TensorFlow/MXNet, using the system cmake: cmake 4 from PyPI rejects Gloo's CMakeLists.
#
# Usage: scripts/build-horovod.sh PYTHON  -> prints the path of the cached wheel
# The cache key holds Horovod, torch and Python versions, so a warm machine never rebuilds.
set -euo pipefail

PY=${1:?usage: build-horovod.sh PYTHON}
HVD_VERSION=0.28.1
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
PY_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
CACHE=${ONCOLAKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oncolake}/wheels/horovod-${HVD_VERSION}-torch${TORCH_VERSION}-${PY_TAG}

existing=$(ls "$CACHE"/horovod-*.whl 2>/dev/null | head -n 1 || true)
if [[ -n "$existing" ]]; then
  echo "$existing"
  exit 0
fi

command -v cmake >/dev/null || { echo "build-horovod: the system cmake is required (apt-get install cmake)" >&2; exit 1; }
command -v g++ >/dev/null || { echo "build-horovod: g++ is required (apt-get install g++)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "build-horovod: building horovod ${HVD_VERSION} against torch ${TORCH_VERSION} (about 10 minutes on 2 cores)" >&2
"$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==${HVD_VERSION}" -d "$work" >&2
tar -xzf "$work/horovod-${HVD_VERSION}.tar.gz" -C "$work"
src="$work/horovod-${HVD_VERSION}"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || { echo "build-horovod: C++17 patch did not apply" >&2; exit 1; }

# A PyPI cmake in the venv would shadow the system one; put /usr/bin first for the build only.
PATH="/usr/bin:$PATH" \
HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
  "$PY" -m pip wheel --no-deps --no-build-isolation -w "$work/dist" "$src" >&2

mkdir -p "$CACHE"
cp "$work"/dist/horovod-*.whl "$CACHE"/
ls "$CACHE"/horovod-*.whl | head -n 1
