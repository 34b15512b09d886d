// <cuda_runtime.h> for the SIMT harness build (csrc/simt/build.py puts csrc/simt/shim first on the
// include path), so the .cu files include it unchanged.
#pragma once
#include "../simt.h"
