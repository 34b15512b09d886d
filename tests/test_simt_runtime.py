"""The SIMT harness itself (csrc/simt/): barriers, votes, shuffles and atomics return what CUDA defines,
and the classic GPU bugs fail the launch with a message naming the bug instead of hanging or passing
(the self-test kernels in csrc/simt/selftest.cu)."""
import pytest
import torch

from conftest import require_simt

COLS = 8


def selftest(name):
    require_simt()
    return torch.ops.gsplat_kit_simt.selftest(name)


def test_block_barriers_and_their_reductions():
    out = selftest("barriers").view(2, 96, COLS)
    n = 96
    t = torch.arange(n)
    for b in range(2):
        o = out[b]
        assert torch.equal(o[:, 0], 100 * ((t + 1) % n) + b), "a thread must see its neighbour's write after __syncthreads"
        assert (o[:, 1] == (n + 2) // 3).all()  # __syncthreads_count(t % 3 == 0)
        assert (o[:, 2] == 1).all() and (o[:, 3] == 0).all()  # _and: all true / one false
        assert (o[:, 4] == 1).all() and (o[:, 5] == 0).all()  # _or: one true / none
        assert torch.equal(o[:, 6], t // 32) and torch.equal(o[:, 7], t % 32)  # threadIdx of a 32 x 3 block


def test_warp_shuffles_and_votes():
    o = selftest("warp").view(64, COLS)
    lane = torch.arange(64) % 32
    assert (o[lane == 0, 0] == 528).all()  # shfl_down reduction: 1 + ... + 32 in lane 0
    assert (o[:, 1] == 496).all()  # xor butterfly: every lane holds the sum
    assert torch.equal(o[:, 2], torch.where(lane >= 3, (lane - 3) * 10, lane * 10))
    assert (o[:, 3] == 35).all()
    assert torch.equal(o[:, 4], torch.tensor([0] * 32 + [1] * 32))  # any: only the second warp has a true lane
    assert (o[:, 5] == 1).all()
    assert (o[:, 6] == 0x11111111).all()
    expect = torch.where(lane < 12, lane + 4, torch.where(lane < 16, lane, torch.full_like(lane, -1)))
    assert torch.equal(o[:, 7], expect)  # width 16: lanes 12..15 keep their own value


def test_atomics():
    o = selftest("atomics")
    assert o[0] == 5 * 64 and o[1] == 4 * 1000 + 63


@pytest.mark.parametrize("name, message", [
    ("early_return", r"__syncthreads at .*selftest.cu:\d+.* is reached by 40 of 64 threads: 24 returned before it"),
    ("inactive_lanes", r"__shfl_down_sync .* names lane 16 of warp 0, which does not exist \(inactive lane"),
    ("exited_lane", r"__any_sync .* names lane 0 .* which has exited \(inactive lane\)"),
    ("shared_oob", r"dynamic shared memory indexed at element 64 of 64"),
    ("divergent_barrier", r"divergent barriers"),
    ("outside_mask", r"lane 8 reads lane 16, which the mask leaves out"),
    ("too_many_threads", r"2048 threads per block"),
    ("too_much_shared", r"65536 bytes of dynamic shared memory"),
])
def test_gpu_bugs_fail_loudly(name, message):
    with pytest.raises(RuntimeError, match=message):
        selftest(name)
    # the harness recovers: the next launch runs normally
    assert (selftest("atomics")[0] == 320).item()
