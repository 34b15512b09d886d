// The SSIM op on the CPU (schema: csrc/bindings.cpp): checks the tensors and runs the kernels of
// ssim_cpu.cpp (the math is described there) in the instruction set csrc/cpu_isa.h chose.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../cpu_isa.h"

namespace {

using at::Tensor;

void check_images(const Tensor& x, const Tensor& y, const Tensor& g) {
    TORCH_CHECK(x.dim() == 4 && x.sizes() == y.sizes(), "ssim: two [B, C, H, W] images of one shape expected, got ",
                x.sizes(), " and ", y.sizes());
    TORCH_CHECK(!x.is_cuda() && !y.is_cuda(), "ssim: the native SSIM is CPU only");
    TORCH_CHECK(x.scalar_type() == y.scalar_type() && g.scalar_type() == x.scalar_type() &&
                    (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
                "ssim: images and window must share a float32 or float64 dtype");
    TORCH_CHECK(g.dim() == 1 && g.size(0) % 2 == 1, "ssim: the window must be 1-D with an odd size");
}

// Returns (ssim map [B, C, H, W], moments [5, B, C, H, W]: mu1, mu2, e11, e22, e12).
std::tuple<Tensor, Tensor> ssim_forward(const Tensor& x_, const Tensor& y_, const Tensor& g_) {
    check_images(x_, y_, g_);
    const Tensor x = x_.contiguous(), y = y_.contiguous(), g = g_.contiguous();
    Tensor moments = at::empty({5, x.size(0), x.size(1), x.size(2), x.size(3)}, x.options());
    Tensor smap = at::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssim_forward", [&] {
        gk::cpu::dispatch([&](auto kern) {
            kern.template ssim_forward<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                                 int(g.size(0)), x.size(0) * x.size(1), int(x.size(2)), int(x.size(3)),
                                                 moments.data_ptr<scalar_t>(), smap.data_ptr<scalar_t>());
        });
    });
    return {smap, moments};
}

// dL/dx for dL/dS = grad (the map's gradient), from the forward's moments.
Tensor ssim_backward(const Tensor& x_, const Tensor& y_, const Tensor& g_, const Tensor& moments_, const Tensor& grad_) {
    check_images(x_, y_, g_);
    const Tensor &x = x_, &grad = grad_, &moments = moments_;
    TORCH_CHECK(grad.sizes() == x.sizes() && moments.dim() == 5 && moments.size(0) == 5 && moments.size(1) == x.size(0) &&
                    moments.size(2) == x.size(1) && moments.size(3) == x.size(2) && moments.size(4) == x.size(3) &&
                    grad.scalar_type() == x.scalar_type() && moments.scalar_type() == x.scalar_type(),
                "ssim_backward: grad and moments do not match the images");
    const Tensor xc = x.contiguous(), yc = y_.contiguous(), gc = g_.contiguous(), gradc = grad.contiguous(),
                 mc = moments.contiguous();
    Tensor terms = at::empty({3, x.size(0), x.size(1), x.size(2), x.size(3)}, x.options());
    Tensor dx = at::empty_like(xc);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssim_backward", [&] {
        gk::cpu::dispatch([&](auto kern) {
            kern.template ssim_backward<scalar_t>(xc.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                                                  int(gc.size(0)), x.size(0) * x.size(1), int(x.size(2)), int(x.size(3)),
                                                  mc.data_ptr<scalar_t>(), gradc.data_ptr<scalar_t>(),
                                                  terms.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>());
        });
    });
    return dx;
}

}  // namespace

// CPU only: on a GPU, gsplat_kit/train/losses.py computes SSIM with torch ops (schema: csrc/bindings.cpp).
TORCH_LIBRARY_IMPL(gsplat_kit, CPU, m) {
    m.impl("ssim_forward", TORCH_FN(ssim_forward));
    m.impl("ssim_backward", TORCH_FN(ssim_backward));
}
