"""wgmma (sm_90a) in isolation: csrc/kernels/wgmma_probe.cu multiplies a 64 x 32 A by a 32 x N B
through two chained k16 steps, in the three operand forms attention v7 uses (both operands in
shared memory, K-major; A in registers and B in shared memory, MN-major; both in shared memory,
MN-major). Checked against a float64
matmul on a Hopper GPU (the descriptor layouts of csrc/kernels/wgmma.cuh against the hardware,
apart from any attention code) and in the CPU emulator (the emulated wgmma reads those layouts
the same way), so that a GPU failure of v7 can be told apart from a layout mistake. Modes 3-5 are
0-2 with each descriptor's two byte offsets (LBO, SBO) swapped: in the emulator they must not
match (so they are a real alternative), on a GPU a failing mode reports whether its swapped twin
matches the hardware (then wgmma.cuh has the offsets the wrong way round for that form) and the
FASTLM_WGMMA_SWAP mask under which v7 / v8 read them the hardware's way without a rebuild; the
emulator, set to read one form the other way round, checks that diagnosis."""
import pytest

torch = pytest.importorskip("torch")

from fastlm.ops import _dispatch  # noqa: E402

try:
    from fastlm import _cuda_emu as emu
except ImportError:
    emu = None

CUDA_MOD = _dispatch.cuda_module() if torch.cuda.is_available() else None
HOPPER = CUDA_MOD is not None and CUDA_MOD.wgmma_supported()
# (N, mode): modes 0 (shared x shared, K-major) and 1 (registers x shared, trans-b) at v7's
# N = 64 / 128; mode 2 (shared x shared, trans-a and trans-b: dQ += dS K) at N = 32 / 64.
CASES = [(n, mode, dtype) for n, mode in ((64, 0), (128, 0), (64, 1), (128, 1), (32, 2), (64, 2))
         for dtype in ("bfloat16", "float16")]


def _probe(module, device, n, mode, dtype, seed):
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(64, 32, generator=gen).to(dt).to(device)
    b = torch.randn(32, n, generator=gen).to(dt).to(device)
    d = torch.full((64, n), float("nan"), device=device)
    stream = _dispatch.stream_handle(a.device) if device == "cuda" else 0
    module.wgmma_probe(a.data_ptr(), b.data_ptr(), d.data_ptr(), n, mode,
                       _dispatch.dtype_code(dt), stream)
    if device == "cuda":
        torch.cuda.synchronize()
    return d.cpu().double(), a.cpu().double() @ b.cpu().double()


def _rel_err(d, ref):
    return float((d - ref).abs().max()) / float(ref.abs().max())


def _matches(d, ref):
    return bool(torch.isfinite(d).all()) and _rel_err(d, ref) < 1e-4


def _swap_bit(mode):
    """The FASTLM_WGMMA_SWAP bit of a probe mode's descriptors (a mask value): mode 0 has
    K-major operands (1), modes 1 and 2 MN-major ones (2)."""
    return 1 if mode % 3 == 0 else 2


def _swap_mask(module, device):
    """The FASTLM_WGMMA_SWAP mask under which `module`'s wgmma reads every operand form the way
    the hardware (or the emulator's set reading) does: 0 when wgmma.cuh is right, None when some
    failing mode is not fixed by swapping its offsets either."""
    mask = 0
    for n, mode, dtype in CASES:
        d, ref = _probe(module, device, n, mode, dtype, seed=n + mode)
        if not _matches(d, ref):
            d2, _ = _probe(module, device, n, mode + 3, dtype, seed=n + mode)
            if not _matches(d2, ref):
                return None
            mask |= _swap_bit(mode)
    return mask


@pytest.mark.skipif(emu is None, reason="no emulator build (needs glibc ucontext)")
@pytest.mark.parametrize("n, mode, dtype", CASES)
def test_emulated_wgmma_matches_matmul(n, mode, dtype):
    d, ref = _probe(emu, "cpu", n, mode, dtype, seed=n + mode)
    assert torch.isfinite(d).all()
    assert float((d - ref).abs().max()) < 1e-4 * float(ref.abs().max())


@pytest.mark.skipif(emu is None, reason="no emulator build (needs glibc ucontext)")
@pytest.mark.parametrize("n, mode, dtype", CASES)
def test_emulated_swapped_offsets_differ(n, mode, dtype):
    """The swapped twin reads other elements: a diagnosis on the GPU can tell the two apart."""
    d, ref = _probe(emu, "cpu", n, mode + 3, dtype, seed=n + mode)
    assert torch.isfinite(d).all()
    assert _rel_err(d, ref) > 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(not HOPPER, reason="needs an sm_90 GPU and fastlm._cuda built for sm_90a")
@pytest.mark.parametrize("n, mode, dtype", CASES)
def test_gpu_wgmma_matches_matmul(n, mode, dtype):
    d, ref = _probe(CUDA_MOD, "cuda", n, mode, dtype, seed=n + mode)
    err = _rel_err(d, ref) if torch.isfinite(d).all() else float("nan")
    if not err < 1e-4:  # NaN: an element was not written (or a layout read NaN)
        d2, _ = _probe(CUDA_MOD, "cuda", n, mode + 3, dtype, seed=n + mode)
        err2 = _rel_err(d2, ref) if torch.isfinite(d2).all() else float("nan")
        pytest.fail(f"mode {mode}: max error {err:.2e} of the largest value; with LBO and SBO "
                    f"swapped (mode {mode + 3}): {err2:.2e}"
                    + (f" -> swap them in wgmma.cuh for this form (until then, v7 / v8 run with "
                       f"FASTLM_WGMMA_SWAP={_swap_bit(mode)} for this form)" if err2 < 1e-4
                       else ""))


@pytest.fixture
def emu_reading():
    """Resets the emulated wgmma's reading and the modules' swap mask after the test."""
    yield
    emu.set_wgmma_reading("isa")
    emu.set_wgmma_swap(0)


@pytest.mark.skipif(emu is None, reason="no emulator build (needs glibc ucontext)")
@pytest.mark.parametrize("reading, mask", [("isa", 0), ("swapped-k-major", 1),
                                           ("swapped-mn-major", 2), ("swapped", 3)])
def test_probe_names_the_mask_that_fixes_the_hardware(emu_reading, reading, mask):
    """Emulated hardware that reads one form's offsets the other way round: the probe's
    diagnosis (what the GPU test reports and tools/gpu_check.sh then sets) is that form's bit."""
    emu.set_wgmma_reading(reading)
    assert _swap_mask(emu, "cpu") == mask


@pytest.mark.skipif(emu is None, reason="no emulator build (needs glibc ucontext)")
def test_set_wgmma_swap_checks_its_arguments(emu_reading):
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="mask must be 0 to 3"):
            emu.set_wgmma_swap(bad)
    emu.set_wgmma_swap(3)
    assert emu.wgmma_swap() == 3
    with pytest.raises(ValueError, match="wgmma reading must be isa"):
        emu.set_wgmma_reading("sideways")


@pytest.mark.skipif(emu is None, reason="no emulator build (needs glibc ucontext)")
def test_probe_refuses_bad_arguments():
    a = torch.zeros(64, 32, dtype=torch.bfloat16)
    d = torch.zeros(64, 64)
    for kw, msg in (({"n": 32}, "n must be 64 or 128"), ({"mode": 2, "n": 128}, "32 or 64"),
                    ({"mode": 5, "n": 128}, "32 or 64"), ({"mode": 6}, "mode must be 0 to 5"),
                    ({"mode": -1}, "mode must be 0 to 5"), ({"dtype": 0}, "bfloat16 or float16")):
        args = {"n": 64, "mode": 0, "dtype": 1, **kw}
        with pytest.raises(ValueError, match=msg):
            emu.wgmma_probe(a.data_ptr(), a.data_ptr(), d.data_ptr(), args["n"], args["mode"],
                            args["dtype"], 0)
    with pytest.raises(ValueError, match="null pointer"):
        emu.wgmma_probe(0, a.data_ptr(), d.data_ptr(), 64, 0, 1, 0)
