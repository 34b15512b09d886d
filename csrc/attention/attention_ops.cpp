// Fused attention-map control kernel: tensor checks, layouts, and the call of the CPU
// (attention_cpu.cpp) or CUDA (attention.cu) launcher; schema in csrc/bindings.cpp.
// gsplat_kit/edit/kernel.py is the Python side.
#include "../ops_common.h"
#include "attention.h"

namespace gk::ops {
namespace {

// out [B*H, Q, Dv] = edited softmax(scale q k^T) v; see attention_math.h for what "edited" means.
// src/slot/store_idx: one entry per batch element (B = q.size(0) / heads).
template <bool kCuda>
Tensor attention_forward(const Tensor& q_, const Tensor& k_, const Tensor& v_, int64_t heads, double scale, at::IntArrayRef src_,
                         at::IntArrayRef slot_, const OptTensor& col_ptr, const OptTensor& rows, const OptTensor& vals,
                         const OptTensor& c, const OptTensor& store, at::IntArrayRef store_idx_) {
    Tensor q = q_, k = k_, v = v_;
    const std::vector<int64_t> src = src_.vec(), slot = slot_.vec();
    std::vector<int64_t> store_idx = store_idx_.vec();
    TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attention_forward: q, k, v must be [B*heads, L, dim], got ",
                q.sizes(), ", ", k.sizes(), ", ", v.sizes());
    const auto dt = q.scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "attention_forward: float32 or float64 expected, got ", dt);
    TORCH_CHECK(k.scalar_type() == dt && v.scalar_type() == dt, "attention_forward: q, k, v must share a dtype");
    TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), "attention_forward: q, k, v must be on one device");
    const int64_t BH = q.size(0), Q = q.size(1), D = q.size(2), K = k.size(1), Dv = v.size(2);
    TORCH_CHECK(heads > 0 && BH % heads == 0, "attention_forward: q.size(0)=", BH, " is not a multiple of heads=", heads);
    TORCH_CHECK(k.size(0) == BH && v.size(0) == BH && k.size(2) == D && v.size(1) == K,
                "attention_forward: shapes disagree: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
    TORCH_CHECK(Q > 0 && K > 0 && D > 0 && Dv > 0, "attention_forward: empty q, k or v");
    const int64_t B = BH / heads;
    TORCH_CHECK(B <= gk::attn::kMaxBatch, "attention_forward: at most ", gk::attn::kMaxBatch, " batch elements, got ", B);
    if (store_idx.empty()) store_idx.assign(B, -1);
    TORCH_CHECK((int64_t)src.size() == B && (int64_t)slot.size() == B && (int64_t)store_idx.size() == B,
                "attention_forward: src, slot and store_idx need one entry per batch element (", B, ")");

    gk::attn::Routing route{};
    route.B = int(B);
    bool any_slot = false;
    int64_t n_store_rows = store ? store->size(0) : 0;
    for (int64_t b = 0; b < B; ++b) {
        TORCH_CHECK(src[b] >= -1 && src[b] < B, "attention_forward: src[", b, "]=", src[b], " out of range");
        TORCH_CHECK(src[b] < 0 || src[src[b]] < 0, "attention_forward: src[", b, "]=", src[b], " is itself edited");
        TORCH_CHECK(src[b] != b, "attention_forward: element ", b, " is its own source");
        TORCH_CHECK(slot[b] < 0 || src[b] >= 0, "attention_forward: element ", b, " has an edit slot but no source");
        TORCH_CHECK(store_idx[b] < n_store_rows, "attention_forward: store_idx[", b, "]=", store_idx[b], " but the store has ",
                    n_store_rows, " rows");
        route.src[b] = int32_t(src[b]);
        route.slot[b] = int32_t(slot[b] < 0 ? -1 : slot[b]);
        route.store_idx[b] = int32_t(store_idx[b] < 0 ? -1 : store_idx[b]);
        any_slot |= slot[b] >= 0;
    }

    int64_t n_slots = 0;
    if (any_slot) {
        TORCH_CHECK(col_ptr && rows && vals && c, "attention_forward: an edit slot is used but col_ptr/rows/vals/c are missing");
        TORCH_CHECK(c->dim() == 2 && c->size(1) == K && c->scalar_type() == dt && c->is_contiguous() && c->device() == q.device(),
                    "attention_forward: c must be a contiguous [slots, K=", K, "] tensor of q's dtype and device, got ", c->sizes());
        n_slots = c->size(0);
        TORCH_CHECK(col_ptr->dim() == 2 && col_ptr->size(0) == n_slots && col_ptr->size(1) == K + 1 &&
                        col_ptr->scalar_type() == at::kInt && col_ptr->is_contiguous() && col_ptr->device() == q.device(),
                    "attention_forward: col_ptr must be a contiguous int32 [slots, K+1] tensor, got ", col_ptr->sizes());
        TORCH_CHECK(rows->dim() == 1 && vals->dim() == 1 && rows->size(0) == vals->size(0) && rows->scalar_type() == at::kInt &&
                        vals->scalar_type() == dt && rows->is_contiguous() && vals->is_contiguous() &&
                        rows->device() == q.device() && vals->device() == q.device(),
                    "attention_forward: rows (int32) and vals (q's dtype) must be contiguous 1-D tensors of one length");
        if (!kCuda) {  // on the GPU these come from gsplat_kit/edit/plan.py as they are
            const int32_t* cp = col_ptr->data_ptr<int32_t>();
            const int32_t* rw = rows->data_ptr<int32_t>();
            const int64_t nnz = rows->size(0);
            for (int64_t i = 0; i < col_ptr->numel(); ++i)
                TORCH_CHECK(cp[i] >= 0 && cp[i] <= nnz && (i % (K + 1) == 0 || cp[i] >= cp[i - 1]), "attention_forward: bad col_ptr");
            for (int64_t i = 0; i < nnz; ++i) TORCH_CHECK(rw[i] >= 0 && rw[i] < K, "attention_forward: row index out of range");
        }
        for (int64_t b = 0; b < B; ++b)
            TORCH_CHECK(slot[b] < n_slots, "attention_forward: slot[", b, "]=", slot[b], " but ", n_slots, " slots given");
    }
    if (store) {
        TORCH_CHECK(store->dim() == 3 && store->size(1) == Q && store->size(2) == K && store->scalar_type() == dt &&
                        store->is_contiguous() && store->device() == q.device(),
                    "attention_forward: store must be a contiguous [rows, Q=", Q, ", K=", K, "] tensor of q's dtype and device, got ",
                    store->sizes());
    }

    q = q.contiguous();
    k = k.contiguous();
    v = v.contiguous();
    Tensor out = at::empty({BH, Q, Dv}, q.options());
    if (kCuda) {
        TORCH_CHECK(Dv <= gk::attn::kCudaMaxHead, "attention_forward: value head dim ", Dv, " above the CUDA kernel's ",
                    gk::attn::kCudaMaxHead);
        TORCH_CHECK(D <= gk::attn::kCudaMaxHead, "attention_forward: query/key head dim ", D, " above the CUDA kernel's ",
                    gk::attn::kCudaMaxHead);
    }
    // The CUDA kernel applies a cross edit to the values (attention.cu): a workspace for them.
    const Tensor edit_values = kCuda && any_slot ? at::empty({BH, K, Dv}, q.options()) : Tensor();
    return GK_DISPATCH_FLOAT(dt, "attention_forward", [&] {
        gk::attn::AttnArgs<scalar_t> a{};
        a.B = int(B); a.H = int(heads); a.Q = int(Q); a.K = int(K); a.D = int(D); a.Dv = int(Dv);
        a.scale = scalar_t(scale);
        a.route = route;
        if (any_slot)
            a.edit = {col_ptr->data_ptr<int32_t>(), rows->data_ptr<int32_t>(), vals->data_ptr<scalar_t>(), c->data_ptr<scalar_t>(), int(K)};
        a.store = store ? store->data_ptr<scalar_t>() : nullptr;
        a.out = out.data_ptr<scalar_t>();
        a.edit_values = edit_values.defined() ? edit_values.data_ptr<scalar_t>() : nullptr;
        a.q = q.data_ptr<scalar_t>();
        a.k = k.data_ptr<scalar_t>();
        a.v = v.data_ptr<scalar_t>();
        if constexpr (kCuda) {
            const CudaScope cs(q);
            gk::attn::attention_fwd_cuda<scalar_t>(a, cs.stream());
            cs.check();
        } else {
            gk::attn::attention_fwd_cpu<scalar_t>(a);
        }
        return out;
    });
}

}  // namespace
}  // namespace gk::ops

#define GK_ATTENTION_IMPLS(m, CUDA) m.impl("attention_forward", TORCH_FN(gk::ops::attention_forward<CUDA>));
GK_REGISTER_OPS(GK_ATTENTION_IMPLS)
