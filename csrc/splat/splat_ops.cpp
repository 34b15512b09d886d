// Rasteriser ops: registration.
#include <torch/extension.h>

void register_splat(pybind11::module_& m) {}
