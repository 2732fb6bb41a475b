#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers from Debian's package registry, without installing anything:
# Debian 13's libonnxruntime-dev is downloaded with a private apt configuration (the system's sources
# are left alone) and unpacked into DEST. Prints the include folder for ONNXRUNTIME_INCLUDE_DIR.
# The library comes from the onnxruntime wheel sfspec depends on (build_onnx.sh finds it).
#   export ONNXRUNTIME_INCLUDE_DIR="$(bash examples/cpp/fetch_onnxruntime_headers.sh /tmp/ort)"
set -euo pipefail
dest="$(mkdir -p "${1:?usage: fetch_onnxruntime_headers.sh DEST}" && cd "$1" && pwd)"
include="$dest/root/usr/include/onnxruntime"
if [ -f "$include/onnxruntime_cxx_api.h" ]; then echo "$include"; exit 0; fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || { echo "needs apt-get and dpkg-deb (Debian)" >&2; exit 3; }
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cd "$dest"
mkdir -p lists/partial cache/archives/partial
echo "deb [signed-by=$keyring] $mirror trixie main" > trixie.list
apt=(-o "Dir::Etc::sourcelist=$dest/trixie.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$dest/lists"
     -o "Dir::Cache=$dest/cache" -o Debug::NoLocking=1)
apt-get "${apt[@]}" -qq update >&2
apt-get "${apt[@]}" -qq download libonnxruntime-dev >&2
dpkg-deb -x libonnxruntime-dev_*.deb root
test -f "$include/onnxruntime_cxx_api.h" || { echo "libonnxruntime-dev holds no onnxruntime_cxx_api.h" >&2; exit 1; }
echo "$include"
