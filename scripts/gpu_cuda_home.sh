#!/usr/bin/env bash
# Prints the CUDA toolkit folder (bin/nvcc and include/cuda_runtime_api.h) for builds outside setup.py, which
# finds it itself (setup.py: find_cuda_home): $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, or the folder above the
# nvcc on PATH. torch's own guess takes the folder above PATH's nvcc, which is wrong where that nvcc is a
# wrapper script (/usr/local/bin/nvcc on the CPU machines). Exit 1 when none is found.
nvcc_dir=$(command -v nvcc 2>/dev/null) && nvcc_dir=$(dirname "$(dirname "$(readlink -f "$nvcc_dir")")")
for c in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda "${nvcc_dir:-}"; do
    if [ -n "$c" ] && [ -x "$c/bin/nvcc" ] && [ -f "$c/include/cuda_runtime_api.h" ]; then
        echo "$c"
        exit 0
    fi
done
exit 1
