// The SIMT harness's scheduler (see simt.h): a block's threads as fibers, their barriers and warp
// operations, and the checks that turn GPU hangs and undefined behaviour into errors.
#include "simt.h"

#include <sys/mman.h>

#include <sstream>
#include <stdexcept>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define GK_SIMT_ASAN 1
#else
#define GK_SIMT_ASAN 0
#endif

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

// Saves the callee-saved registers and the FP control words on the current stack, stores the stack
// pointer in *save, and resumes the context whose stack pointer is `load` (System V x86-64). A fiber
// switch is then a few nanoseconds: barriers of 256 threads stay cheap enough to run every test.
extern "C" void gk_simt_switch(void** save, void* load);
asm(R"(
    .text
    .globl gk_simt_switch
    .type gk_simt_switch, @function
gk_simt_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gk_simt_switch, .-gk_simt_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");

namespace gk::simt {
namespace {

// Per thread: kernels keep small arrays on the stack (the attention kernel 2 KiB of accumulators), and
// AddressSanitizer's redzones need more. Pages are committed when touched, so this is address space.
constexpr size_t kStackBytes = size_t(512) << 10;
constexpr size_t kGuardBytes = 4096;  // PROT_NONE below each stack: an overflow faults, never corrupts
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kMaxDynamicShared = size_t(48) << 10;  // without cudaFuncSetAttribute opt-in

enum class State { Ready, Barrier, Warp, Done };

struct Thread {
    void* sp = nullptr;
    State state = State::Ready;
    Site site;
    Sync sync = Sync::Barrier;
    WarpOp op = WarpOp::Any;
    unsigned mask = 0;
    int pred = 0, arg = 0, width = 32;
    uint64_t bits = 0, result = 0;
};

struct Block {
    Body body = nullptr;
    void* ctx = nullptr;
    unsigned n = 0;
    std::vector<Thread> threads;
    std::vector<unsigned char*> stacks;
    std::vector<unsigned char> smem;
    void* sched_sp = nullptr;
    unsigned current = 0;
    std::string error;
    const void* main_bottom = nullptr;
    size_t main_size = 0;
};

thread_local Block* g_block = nullptr;
thread_local std::vector<unsigned char*> g_stack_pool;  // reused across launches, never freed

unsigned char* stack_from_pool(size_t i) {
    while (g_stack_pool.size() <= i) {
        void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) throw std::runtime_error("SIMT harness: cannot map a thread stack");
        mprotect(p, kGuardBytes, PROT_NONE);
        g_stack_pool.push_back(static_cast<unsigned char*>(p));
    }
    return g_stack_pool[i];
}

std::string coords(const uint3& v) {
    return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
uint3 thread_coords(unsigned i) {
    return {i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y)};
}
std::string where(const Site& s) {
    return std::string(s.file_name()) + ":" + std::to_string(s.line()) + " in " + s.function_name();
}
std::string thread_name(unsigned i) { return "thread " + coords(thread_coords(i)) + " (linear " + std::to_string(i) + ")"; }

void switch_out(Block* b, bool dying) {  // from a kernel thread to the scheduler
    Thread& t = b->threads[b->current];
#if GK_SIMT_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake, b->main_bottom, b->main_size);
    gk_simt_switch(&t.sp, b->sched_sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    (void)dying;
    gk_simt_switch(&t.sp, b->sched_sp);
#endif
}

[[noreturn]] void thread_entry() {
    Block* b = g_block;
#if GK_SIMT_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &b->main_bottom, &b->main_size);
#endif
    b->body(b->ctx);
    b->threads[b->current].state = State::Done;
    switch_out(b, true);
    __builtin_trap();  // a finished thread is never resumed
}

void start_thread(Block& b, unsigned i) {
    unsigned char* stack = b.stacks[i];
#if GK_SIMT_ASAN
    // A thread abandoned by a failed launch leaves its frames poisoned; the next one starts clean.
    ASAN_UNPOISON_MEMORY_REGION(stack + kGuardBytes, kStackBytes - kGuardBytes);
#endif
    void** sp = reinterpret_cast<void**>(stack + kStackBytes);
    *--sp = nullptr;                                          // thread_entry's return address: never used
    *--sp = reinterpret_cast<void*>(&thread_entry);           // where gk_simt_switch returns to
    for (int r = 0; r < 6; ++r) *--sp = nullptr;              // rbp rbx r12..r15
    uint32_t ctl[2] = {0, 0};
    asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(ctl[0]), "=m"(ctl[1]));
    *--sp = nullptr;
    std::memcpy(sp, ctl, sizeof ctl);
    b.threads[i] = Thread{};
    b.threads[i].sp = sp;
}

void resume(Block& b, unsigned i) {
    b.current = i;
    threadIdx = thread_coords(i);
#if GK_SIMT_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, b.stacks[i] + kGuardBytes, kStackBytes - kGuardBytes);
    gk_simt_switch(&b.sched_sp, b.threads[i].sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    gk_simt_switch(&b.sched_sp, b.threads[i].sp);
#endif
}

[[noreturn]] void launch_error(const std::string& what) {
    throw std::runtime_error("SIMT harness: block " + coords(blockIdx) + " of grid " +
                             coords({gridDim.x, gridDim.y, gridDim.z}) + ", " + std::to_string(blockDim.x * blockDim.y * blockDim.z) +
                             " threads: " + what);
}

const char* sync_name(Sync s) {
    switch (s) {
        case Sync::Barrier: return "__syncthreads";
        case Sync::BarrierCount: return "__syncthreads_count";
        case Sync::BarrierAnd: return "__syncthreads_and";
        case Sync::BarrierOr: return "__syncthreads_or";
    }
    return "?";
}
const char* op_name(WarpOp o) {
    switch (o) {
        case WarpOp::Shfl: return "__shfl_sync";
        case WarpOp::ShflUp: return "__shfl_up_sync";
        case WarpOp::ShflDown: return "__shfl_down_sync";
        case WarpOp::ShflXor: return "__shfl_xor_sync";
        case WarpOp::Any: return "__any_sync";
        case WarpOp::All: return "__all_sync";
        case WarpOp::Ballot: return "__ballot_sync";
    }
    return "?";
}

std::string hex(unsigned m) {
    std::ostringstream s;
    s << "0x" << std::hex << m;
    return s.str();
}

// Releases the warp group that lane `first` waits in, or fails: every lane the mask names must wait at
// the same operation with the same mask. Called only when no thread can run, so a named lane that has
// exited, does not exist or waits elsewhere would never arrive (a hang or undefined on a GPU).
void release_warp(Block& b, unsigned first) {
    const Thread& t0 = b.threads[first];
    const unsigned base = first / 32 * 32, lane0 = first % 32;
    const std::string what = std::string(op_name(t0.op)) + " at " + where(t0.site) + " with mask " + hex(t0.mask);
    if (!(t0.mask >> lane0 & 1u)) launch_error(thread_name(first) + " calls " + what + ", which leaves out its own lane");
    if (t0.width <= 0 || t0.width > 32 || (t0.width & (t0.width - 1)))
        launch_error(what + ": width " + std::to_string(t0.width) + " is not a power of two <= 32");
    for (unsigned l = 0; l < 32; ++l) {
        if (!(t0.mask >> l & 1u)) continue;
        const unsigned i = base + l;
        if (i >= b.n)
            launch_error(what + " names lane " + std::to_string(l) + " of warp " + std::to_string(base / 32) +
                         ", which does not exist (inactive lane; the block has " + std::to_string(b.n) + " threads)");
        const Thread& t = b.threads[i];
        if (t.state == State::Done)
            launch_error(what + " names lane " + std::to_string(l) + " (" + thread_name(i) + "), which has exited (inactive lane)");
        if (t.state == State::Barrier)
            launch_error(what + " names lane " + std::to_string(l) + " (" + thread_name(i) + "), which waits at " +
                         sync_name(t.sync) + " at " + where(t.site) + " (deadlock)");
        if (t.op != t0.op || t.mask != t0.mask || t.width != t0.width || t.site.line() != t0.site.line() ||
            std::strcmp(t.site.file_name(), t0.site.file_name()) != 0)
            launch_error(what + " names lane " + std::to_string(l) + " (" + thread_name(i) + "), which waits at " +
                         op_name(t.op) + " at " + where(t.site) + " with mask " + hex(t.mask));
    }
    uint64_t any = 0, all = 1, ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (t0.mask >> l & 1u) {
            const bool p = b.threads[base + l].bits != 0;
            any |= p;
            all &= p;
            ballot |= uint64_t(p) << l;
        }
    for (unsigned l = 0; l < 32; ++l) {
        if (!(t0.mask >> l & 1u)) continue;
        Thread& t = b.threads[base + l];
        const int w = t0.width, seg = int(l) / w * w;
        int src = int(l);
        switch (t0.op) {
            case WarpOp::Any: t.result = any; break;
            case WarpOp::All: t.result = all; break;
            case WarpOp::Ballot: t.result = ballot; break;
            case WarpOp::Shfl: src = seg + ((t.arg % w) + w) % w; break;
            case WarpOp::ShflUp: src = int(l) - t.arg >= seg ? int(l) - t.arg : int(l); break;
            case WarpOp::ShflDown: src = int(l) + t.arg < seg + w ? int(l) + t.arg : int(l); break;
            case WarpOp::ShflXor: src = (int(l) ^ t.arg) < seg + w ? int(l) ^ t.arg : int(l); break;
        }
        if (t0.op == WarpOp::Shfl || t0.op == WarpOp::ShflUp || t0.op == WarpOp::ShflDown || t0.op == WarpOp::ShflXor) {
            if (src < 0 || src >= 32 || !(t0.mask >> src & 1u))
                launch_error(what + ": lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
                             ", which the mask leaves out (undefined value on a GPU)");
            t.result = b.threads[base + src].bits;
        }
    }
    for (unsigned l = 0; l < 32; ++l)
        if (t0.mask >> l & 1u) b.threads[base + l].state = State::Ready;
}

// Every thread waits or has finished: release what can be released, or fail saying why nothing can.
void release(Block& b) {
    unsigned at_barrier = 0, done = 0, first_done = b.n, first_warp = b.n;
    for (unsigned i = 0; i < b.n; ++i) {
        const State s = b.threads[i].state;
        at_barrier += s == State::Barrier;
        if (s == State::Done) {
            ++done;
            if (first_done == b.n) first_done = i;
        }
        if (s == State::Warp && first_warp == b.n) first_warp = i;
    }
    if (first_warp < b.n) {  // warps first: a barrier needs every thread, so those waiting in a warp too
        for (unsigned i = first_warp; i < b.n; ++i)
            if (b.threads[i].state == State::Warp) release_warp(b, i);
        return;
    }
    unsigned first_bar = 0;
    while (b.threads[first_bar].state != State::Barrier) ++first_bar;  // there is one: not all are done
    const Thread& tb = b.threads[first_bar];
    if (done > 0)
        launch_error(std::string(sync_name(tb.sync)) + " at " + where(tb.site) + " is reached by " + std::to_string(at_barrier) +
                     " of " + std::to_string(b.n) + " threads: " + std::to_string(done) + " returned before it (first: " +
                     thread_name(first_done) + "); a GPU would hang or skip the barrier");
    int count = 0;
    for (unsigned i = 0; i < b.n; ++i) {
        const Thread& t = b.threads[i];
        if (t.sync != tb.sync || t.site.line() != tb.site.line() || std::strcmp(t.site.file_name(), tb.site.file_name()) != 0)
            launch_error("divergent barriers: " + thread_name(first_bar) + " waits at " + sync_name(tb.sync) + " at " +
                         where(tb.site) + ", " + thread_name(i) + " at " + sync_name(t.sync) + " at " + where(t.site));
        count += t.pred;
    }
    int result = 0;
    switch (tb.sync) {
        case Sync::Barrier: break;
        case Sync::BarrierCount: result = count; break;
        case Sync::BarrierAnd: result = count == int(b.n); break;
        case Sync::BarrierOr: result = count > 0; break;
    }
    for (unsigned i = 0; i < b.n; ++i) {
        b.threads[i].result = uint64_t(result);
        b.threads[i].state = State::Ready;
    }
}

void run_block(Block& b) {
    std::fill(b.smem.begin(), b.smem.end(), 0xff);  // unwritten shared memory reads as NaN / -1, not as zero
    for (unsigned i = 0; i < b.n; ++i) start_thread(b, i);
    for (;;) {
        for (unsigned i = 0; i < b.n; ++i) {
            if (b.threads[i].state != State::Ready) continue;
            resume(b, i);
            if (!b.error.empty()) launch_error(thread_name(i) + ": " + b.error);
        }
        bool finished = true;
        for (unsigned i = 0; i < b.n && finished; ++i) finished = b.threads[i].state == State::Done;
        if (finished) return;
        release(b);
    }
}

Block& running() {
    if (!g_block) throw std::logic_error("SIMT harness: a CUDA device function was called outside a kernel launch");
    return *g_block;
}

}  // namespace

int block_sync(Sync kind, int predicate, const Site& site) {
    Block& b = running();
    Thread& t = b.threads[b.current];
    t.state = State::Barrier;
    t.sync = kind;
    t.pred = predicate;
    t.site = site;
    switch_out(&b, false);
    return int(t.result);
}

uint64_t warp_sync(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, const Site& site) {
    Block& b = running();
    Thread& t = b.threads[b.current];
    t.state = State::Warp;
    t.op = op;
    t.mask = mask;
    t.bits = bits;
    t.arg = arg;
    t.width = width;
    t.site = site;
    switch_out(&b, false);
    return t.result;
}

void fail(const std::string& what) {
    Block& b = running();
    b.error = what;
    b.threads[b.current].state = State::Done;
    switch_out(&b, true);
    __builtin_trap();
}

unsigned char* dynamic_shared_base() { return running().smem.data(); }
size_t dynamic_shared_bytes() { return running().smem.size(); }

void run_grid(dim3 grid, dim3 block, size_t smem, Body body, void* ctx) {
    if (g_block) throw std::logic_error("SIMT harness: a kernel launched another kernel");
    gridDim = grid;
    blockDim = block;
    const uint64_t n = uint64_t(block.x) * block.y * block.z;
    if (n == 0 || n > kMaxThreads)
        throw std::runtime_error("SIMT harness: invalid launch: " + std::to_string(n) + " threads per block (1.." +
                                 std::to_string(kMaxThreads) + ")");
    if (uint64_t(grid.x) * grid.y * grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        throw std::runtime_error("SIMT harness: invalid launch: grid " + coords({grid.x, grid.y, grid.z}));
    if (smem > kMaxDynamicShared)
        throw std::runtime_error("SIMT harness: invalid launch: " + std::to_string(smem) + " bytes of dynamic shared memory (at most " +
                                 std::to_string(kMaxDynamicShared) + " without an opt-in)");
    Block b;
    b.body = body;
    b.ctx = ctx;
    b.n = unsigned(n);
    b.threads.resize(n);
    b.smem.resize(smem);
    for (unsigned i = 0; i < n; ++i) b.stacks.push_back(stack_from_pool(i));
    struct Reset {
        ~Reset() { g_block = nullptr; }
    } reset;
    g_block = &b;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                run_block(b);
            }
}

}  // namespace gk::simt
