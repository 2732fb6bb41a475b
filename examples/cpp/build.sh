#!/usr/bin/env bash
# Build replay_golden against the LibTorch that ships inside the installed torch wheel.
set -euo pipefail
cd "$(dirname "$0")"
read -r include api lib abi < <(python - <<'PY'
import torch
from torch.utils import cpp_extension as c
print(*c.include_paths(), c.library_paths()[0], int(torch._C._GLIBCXX_USE_CXX11_ABI))
PY
)
${CXX:-g++} -std=c++17 -O1 -D_GLIBCXX_USE_CXX11_ABI="$abi" -I"$include" -I"$api" replay_golden.cpp \
  -o "${1:-replay_golden}" -L"$lib" -Wl,-rpath,"$lib" -ltorch -ltorch_cpu -lc10
