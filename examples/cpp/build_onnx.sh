#!/usr/bin/env bash
# Build replay_onnx against ONNX Runtime's C/C++ API.
#
#   bash examples/cpp/build_onnx.sh [OUTPUT]        (default: examples/cpp/build/replay_onnx)
#
# Headers (onnxruntime_cxx_api.h), first found of:
#   $ONNXRUNTIME_INCLUDE_DIR; $ONNXRUNTIME_ROOT/include[/onnxruntime] (a release archive, a conda prefix);
#   pkg-config libonnxruntime (Debian's libonnxruntime-dev); the compiler's own include path (and its onnxruntime/).
# Library (libonnxruntime.so*), first found of:
#   $ONNXRUNTIME_LIB_DIR; $ONNXRUNTIME_ROOT/lib; pkg-config's libdir; the onnxruntime Python package's capi/
#   (the PyPI wheel ships the library, not the headers).
# Exit status: 0 built, 3 headers or library not found (the message says how to get them), else the compiler's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/build/replay_onnx}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
cxx="${CXX:-g++}"

missing() {
  cat >&2 <<EOF
build_onnx.sh: $1 not found. To get it:
  - Debian 13 or later: apt-get install libonnxruntime-dev;
  - Debian 12: the headers of Debian 13's libonnxruntime-dev, unpacked (examples/cpp/README.md says how);
  - anywhere: ONNXRUNTIME_INCLUDE_DIR=<folder with onnxruntime_cxx_api.h> and ONNXRUNTIME_LIB_DIR=<folder with
    libonnxruntime.so*> ('pip install onnxruntime' provides the library), or ONNXRUNTIME_ROOT=<an unpacked release>.
EOF
  exit 3
}

has_header() { [ -n "$1" ] && [ -f "$1/onnxruntime_cxx_api.h" ]; }

find_include() {
  local candidates=("${ONNXRUNTIME_INCLUDE_DIR:-}")
  if [ -n "${ONNXRUNTIME_ROOT:-}" ]; then
    candidates+=("$ONNXRUNTIME_ROOT/include" "$ONNXRUNTIME_ROOT/include/onnxruntime")
  fi
  if pkg-config --exists libonnxruntime 2>/dev/null; then
    candidates+=("$(pkg-config --variable=includedir libonnxruntime)")
  fi
  # The compiler's default search path (/usr/include, /usr/local/include, ... as this compiler has it).
  local dir
  while read -r dir; do candidates+=("$dir" "$dir/onnxruntime"); done < <(
    echo | "$cxx" -xc++ -E -v - 2>&1 >/dev/null | sed -n '/^#include <...>/,/^End of search/{/^ /s/^ //p}')
  for dir in "${candidates[@]}"; do
    if has_header "$dir"; then echo "$dir"; return; fi
  done
}

has_library() { [ -n "$1" ] && compgen -G "$1/libonnxruntime.so*" >/dev/null; }

find_library() {
  local candidates=("${ONNXRUNTIME_LIB_DIR:-}")
  [ -n "${ONNXRUNTIME_ROOT:-}" ] && candidates+=("$ONNXRUNTIME_ROOT/lib")
  if pkg-config --exists libonnxruntime 2>/dev/null; then
    candidates+=("$(pkg-config --variable=libdir libonnxruntime)")
  fi
  local wheel='import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))'
  candidates+=("$("${PYTHON:-python3}" -c "$wheel" 2>/dev/null || true)")
  local dir
  for dir in "${candidates[@]}"; do
    if has_library "$dir"; then echo "$dir"; return; fi
  done
}

include="$(find_include)"
[ -n "$include" ] || missing "ONNX Runtime's C++ headers (onnxruntime_cxx_api.h)"
libdir="$(find_library)"
[ -n "$libdir" ] || missing "ONNX Runtime's library (libonnxruntime.so)"

# Link to the library by its SONAME (libonnxruntime.so.1). The PyPI wheel ships only the fully versioned
# file (libonnxruntime.so.1.NN.N), so where the SONAME file is absent, onnxruntime-lib/ beside the program
# links to it (found through $ORIGIN: move the program and that folder together).
library="$(ls "$libdir"/libonnxruntime.so* | sort | tail -n 1)"
soname="$(objdump -p "$library" 2>/dev/null | awk '/SONAME/ {print $2}')"
rpath="$libdir"
if [ -n "$soname" ] && [ ! -e "$libdir/$soname" ]; then
  mkdir -p "$(dirname "$out")/onnxruntime-lib"
  ln -sfn "$library" "$(dirname "$out")/onnxruntime-lib/$soname"
  rpath='$ORIGIN/onnxruntime-lib'
fi

mkdir -p "$(dirname "$out")"
echo "build_onnx.sh: headers $include, library $library" >&2
"$cxx" -std=c++17 -O1 -Wall -Wextra -I"$include" "$here/replay_onnx.cpp" -o "$out" \
  "$library" -Wl,-rpath,"$rpath"
