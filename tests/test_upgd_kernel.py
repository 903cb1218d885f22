"""The compiled AdaptiveUPGD CPU kernel (issue 14, item 8; issue 23): opt-in only (the torch path is the default),
agreement with the torch path, the on-disk cache (private to the user: every way a file another user could write is
refused), a clear fallback where no compiler exists, the thread split, and the polynomial gate."""
import os
import subprocess
import tempfile
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

import tradingrl_nb.adaptive_upgd as aupgd_mod
import tradingrl_nb.upgd_kernel as uk
from tradingrl_nb.adaptive_upgd import AdaptiveUPGD
from tradingrl_nb.upgd_kernel import KernelUnavailable, find_compiler, gate_polynomial, kernel_status, load_kernel

needs_cc = pytest.mark.skipif(find_compiler() is None, reason="no C compiler (the kernel is opt-in; torch path tested elsewhere)")


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    """Every test of this file compiles into a cache of its own (never the user's ~/.cache, which an older version may
    have created with a shared mode), with the opt-in variable unset unless a test sets it."""
    folder = tmp_path_factory.mktemp("kernel-cache") / "kernels"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRADINGRL_KERNEL_CACHE", str(folder))
        mp.delenv("TRADINGRL_KERNEL", raising=False)
        uk._forget_kernel()
        yield folder
    uk._forget_kernel()


def model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 33), torch.nn.Tanh(), torch.nn.Linear(33, 5)).to(dtype)


def run(kernel, steps=30, seed=0, groups=False, **kw):
    """`steps` AdaptiveUPGD steps on gradients drawn from a generator (no feedback from the parameters, so the two paths'
    rounding differences cannot grow chaotically). Returns the model and the optimizer."""
    m = model(seed)
    params = ([{"params": list(m[0].parameters())}, {"params": list(m[2].parameters()), "lr": 3e-3}] if groups
              else m.parameters())
    opt = AdaptiveUPGD(params, **{"lr": 1e-2, "weight_decay": 1e-2, "seed": 3, **kw}, kernel=kernel)
    gen = torch.Generator().manual_seed(seed + 100)
    for _ in range(steps):
        for p in m.parameters(): p.grad = torch.randn(p.shape, generator=gen) * 1e-2
        opt.step()
    return m, opt


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
    """A kernel cache folder for this test that does not exist yet (the loader creates it), and a process that has not
    looked for the kernel yet (restored afterwards)."""
    folder = tmp_path / "kernels"
    monkeypatch.setenv("TRADINGRL_KERNEL_CACHE", str(folder))
    monkeypatch.delenv("TRADINGRL_KERNEL", raising=False)
    uk._forget_kernel()
    aupgd_mod._kernel_warned.clear()
    yield folder
    uk._forget_kernel()
    aupgd_mod._kernel_warned.clear()


def plant_library(path, marker):
    """A shared library at `path` that another user could have planted: it defines the kernel's two functions and,
    when loaded, writes `marker` (so a test sees whether it was ever loaded)."""
    src = ('#include <stdio.h>\n#include <stdint.h>\n'
           f'__attribute__((constructor)) static void planted(void) {{ FILE *f = fopen("{marker}", "w"); '
           'if (f) { fputs("loaded", f); fclose(f); } }\n'
           'void aupgd_pass1(void) {}\nvoid aupgd_pass2(void) {}\n')
    r = subprocess.run([find_compiler(), "-shared", "-fPIC", "-x", "c", "-", "-o", str(path)], input=src, text=True,
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    return path


def built_kernel():
    "Build (or load) the kernel into the current cache; returns its path, with the process forgetting it again."
    st = kernel_status()
    assert st["available"], st["error"]
    uk._forget_kernel()
    return __import__("pathlib").Path(st["path"])


@needs_cc
@pytest.mark.parametrize("kw", [{}, {"adaptive_noise": False}, {"adaptive_noise": False, "sigma": 0.0},
                                {"weight_decay": 0.0, "beta_utility": 0.9}, {"groups": True}])
def test_the_kernel_path_matches_the_torch_path(kw):
    "Same rule, same state, same noise draws: 30 steps agree to float32 rounding (params and every state tensor)."
    ma, oa = run("compiled", **kw)
    mb, ob = run("torch", **kw)
    for a, b in zip(ma.parameters(), mb.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert not torch.equal(a, model(0).state_dict()[next(k for k, v in ma.named_parameters() if v is a)])   # it moved
        for k in ("utility", "exp_avg", "exp_avg_sq"):
            x, y = oa.state[a][k], ob.state[b][k]
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-6 * float(y.abs().max())), k
    assert oa.metrics()["noise_to_signal"] == pytest.approx(ob.metrics()["noise_to_signal"], rel=1e-5)


def test_the_default_is_the_torch_path_and_never_looks_for_the_kernel(monkeypatch):
    "The default (kernel='auto') neither compiles nor loads anything: no compiler, no cache folder, no file is touched."
    def no(*a, **k): raise AssertionError("the default optimizer looked for the compiled kernel")
    monkeypatch.setattr(uk, "load_kernel", no)
    monkeypatch.setattr(aupgd_mod, "load_kernel", no)
    monkeypatch.setattr(uk, "kernel_status", no)
    monkeypatch.setattr(aupgd_mod, "kernel_status", no)
    m_default, _ = run("auto", steps=3)
    m = model()
    opt = AdaptiveUPGD(m.parameters(), lr=1e-2, weight_decay=1e-2, seed=3)  # no kernel argument
    gen = torch.Generator().manual_seed(100)
    for _ in range(3):
        for p in m.parameters(): p.grad = torch.randn(p.shape, generator=gen) * 1e-2
        opt.step()
    for a, b in zip(m.parameters(), m_default.parameters()): assert torch.equal(a, b)   # same process, seed, CPU


@needs_cc
def test_the_kernel_runs_only_when_opted_in(monkeypatch):
    "kernel='compiled', or TRADINGRL_KERNEL=compiled with the default 'auto', runs the compiled passes (counted)."
    calls = []
    orig = uk.Kernel.pass1
    monkeypatch.setattr(uk.Kernel, "pass1", lambda self, *a: calls.append(1) or orig(self, *a))
    run("auto", steps=3)
    run("torch", steps=3)
    assert len(calls) == 0
    run("compiled", steps=3)
    assert len(calls) == 3
    monkeypatch.setenv("TRADINGRL_KERNEL", "compiled")
    run("auto", steps=3)
    assert len(calls) == 6
    run("torch", steps=3)                                       # an explicit 'torch' wins over the variable
    assert len(calls) == 6


@needs_cc
def test_buckets_the_kernel_cannot_take_run_the_torch_path_bit_for_bit():
    "A parameter without a gradient (per-tensor step counts differ) or a non-contiguous one: the torch path, exactly."
    def go(kernel, mode):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(9, 4).t()) if mode == "strided" else torch.nn.Parameter(torch.randn(4, 9))
        ps = [w, torch.nn.Parameter(torch.randn(9)), torch.nn.Parameter(torch.randn(3))]
        opt = AdaptiveUPGD(ps, lr=1e-2, seed=0, kernel=kernel)
        gen = torch.Generator().manual_seed(1)
        for t in range(6):
            for i, p in enumerate(ps):
                p.grad = None if (mode == "late" and i == 2 and t < 3) else torch.randn(p.shape, generator=gen)
            opt.step()
        return ps
    for mode in ("late", "strided"):
        # bit for bit by construction: the same torch operations, seed and process on the CPU
        for a, b in zip(go("compiled", mode), go("torch", mode)): assert torch.equal(a, b), mode


@needs_cc
def test_a_state_moves_between_the_two_paths():
    "A checkpoint of the kernel path resumes on the torch path (and back) and continues alike."
    m, o = run("compiled", steps=10)
    sd, params = o.state_dict(), {k: v.clone() for k, v in m.state_dict().items()}
    cont = []
    for kernel in ("compiled", "torch"):
        m2 = model()
        m2.load_state_dict(params)
        o2 = AdaptiveUPGD(m2.parameters(), lr=1e-2, weight_decay=1e-2, seed=3, kernel=kernel)
        o2.load_state_dict(sd)
        gen = torch.Generator().manual_seed(7)
        for _ in range(10):
            for p in m2.parameters(): p.grad = torch.randn(p.shape, generator=gen) * 1e-2
            o2.step()
        cont.append(torch.cat([p.detach().flatten() for p in m2.parameters()]))
    assert torch.allclose(cont[0], cont[1], rtol=1e-5, atol=1e-7)


@needs_cc
def test_the_thread_split_changes_no_bit(monkeypatch):
    "Large buckets are split over threads; element-wise work and an exact min/max make the result identical."
    monkeypatch.setattr(uk, "MIN_CHUNK", 64)
    outs = []
    for threads in (1, 3):
        n = torch.get_num_threads()
        torch.set_num_threads(threads)
        try: m, _ = run("compiled", steps=5)
        finally: torch.set_num_threads(n)
        outs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(outs[0], outs[1])


@needs_cc
def test_the_kernel_is_compiled_once_and_then_loaded_from_the_cache(fresh_kernel):
    st1 = kernel_status()
    assert st1["available"] and st1["compiled"] and st1["path"].startswith(str(fresh_kernel))
    uk._forget_kernel()                                       # a new process, as far as the loader can tell
    st2 = kernel_status()
    assert st2["available"] and not st2["compiled"] and st2["path"] == st1["path"]
    assert len(list(fresh_kernel.glob("*.so"))) == 1 and not list(fresh_kernel.glob(".*.tmp"))


# ---------------------------------------------------------------- the cache is private (issue 23)
@needs_cc
def test_the_cache_folder_is_created_private(fresh_kernel):
    "A missing cache folder is created with mode 0700; the library and its recorded digest are not writable by others."
    assert kernel_status()["available"]
    assert fresh_kernel.stat().st_mode & 0o777 == 0o700
    so = next(fresh_kernel.glob("*.so"))
    for f in (so, so.with_name(so.name + ".sha256")):
        st = os.lstat(f)
        assert st.st_uid == os.getuid() and st.st_mode & 0o022 == 0, (f, oct(st.st_mode))


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o777, 0o701], ids=oct)
def test_a_cache_folder_others_can_use_is_refused(fresh_kernel, mode):
    fresh_kernel.mkdir()
    fresh_kernel.chmod(mode)
    with pytest.raises(KernelUnavailable, match="0700"):
        AdaptiveUPGD(model().parameters(), kernel="compiled")
    assert not list(fresh_kernel.iterdir())                   # nothing written there, nothing loaded from there
    assert kernel_status()["path"] is None and "0700" in kernel_status()["error"]


def test_a_cache_folder_of_another_user_is_refused(fresh_kernel, monkeypatch):
    fresh_kernel.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.lstat(fresh_kernel).st_uid + 1)   # we are someone else now
    with pytest.raises(KernelUnavailable, match="owned by"):
        AdaptiveUPGD(model().parameters(), kernel="compiled")


def test_a_linked_cache_folder_is_refused(fresh_kernel, tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    fresh_kernel.symlink_to(real, target_is_directory=True)
    with pytest.raises(KernelUnavailable, match="link"):
        AdaptiveUPGD(model().parameters(), kernel="compiled")


def test_there_is_no_temp_dir_fallback(tmp_path, monkeypatch):
    "A cache that cannot be created is an error saying why, never a folder of predictable name in the temp dir."
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.delenv("TRADINGRL_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    uk._forget_kernel()
    try:
        with pytest.raises(KernelUnavailable, match="cannot create"):
            AdaptiveUPGD(model().parameters(), kernel="compiled")
        assert not list((tmp_path / "tmp").iterdir())
    finally: uk._forget_kernel()


@needs_cc
def test_a_planted_library_without_a_recorded_digest_is_rebuilt_never_loaded(fresh_kernel, tmp_path):
    fresh_kernel.mkdir(mode=0o700)
    marker = tmp_path / "planted-was-loaded"
    plant_library(uk.kernel_path(), marker)
    st = kernel_status()
    assert not marker.exists(), "a library this user did not build was loaded"
    assert st["available"] and st["compiled"]
    assert uk.kernel_path().with_name(uk.kernel_path().name + ".sha256").exists()


@needs_cc
def test_a_library_that_differs_from_its_recorded_digest_is_refused(fresh_kernel, tmp_path):
    so = built_kernel()
    marker = tmp_path / "planted-was-loaded"
    plant_library(tmp_path / "planted.so", marker)
    os.replace(tmp_path / "planted.so", so)                   # same name, owner and mode: only the bytes differ
    with pytest.raises(KernelUnavailable, match="sha256"):
        AdaptiveUPGD(model().parameters(), kernel="compiled")
    assert not marker.exists()


@needs_cc
@pytest.mark.parametrize("which", ["library", "digest"])
def test_a_group_or_world_writable_file_is_refused(fresh_kernel, which):
    so = built_kernel()
    (so if which == "library" else so.with_name(so.name + ".sha256")).chmod(0o666)
    with pytest.raises(KernelUnavailable, match="writable"):
        AdaptiveUPGD(model().parameters(), kernel="compiled")


@needs_cc
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("which", ["library", "digest"])
def test_a_file_of_another_user_is_refused(fresh_kernel, which):
    so = built_kernel()
    os.chown(so if which == "library" else so.with_name(so.name + ".sha256"), 65534, -1)
    with pytest.raises(KernelUnavailable, match="owned by"):
        AdaptiveUPGD(model().parameters(), kernel="compiled")


@needs_cc
def test_a_linked_library_is_refused(fresh_kernel, tmp_path):
    "Even a link to a true copy of the kernel (its digest matches): the file loaded is the file checked, never a link."
    so = built_kernel()
    copy = tmp_path / "copy.so"
    copy.write_bytes(so.read_bytes())
    so.unlink()
    so.symlink_to(copy)
    with pytest.raises(KernelUnavailable, match="link"):
        AdaptiveUPGD(model().parameters(), kernel="compiled")


def test_a_changed_kernel_gets_a_new_cache_file(fresh_kernel, monkeypatch):
    before = uk.kernel_path()
    monkeypatch.setattr(uk, "KERNEL_SOURCE", uk.KERNEL_SOURCE + "\n/* changed */\n")
    assert uk.kernel_path() != before


def test_without_a_compiler_opting_in_warns_once_and_compiled_says_why(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_kernel / "no-such-compiler"))
    with pytest.raises(KernelUnavailable, match="no-such-compiler"):
        AdaptiveUPGD(model().parameters(), kernel="compiled")
    uk._forget_kernel()
    monkeypatch.setenv("TRADINGRL_KERNEL", "compiled")       # opted in with the default kernel='auto'
    with pytest.warns(RuntimeWarning, match="compiled CPU kernel is unavailable"):
        m_auto, _ = run("auto", steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # once per process, not per step or per optimizer
        run("auto", steps=2)
    m_torch, _ = run("torch", steps=3)
    # bit for bit by construction: both ran the torch path, same seed, same process, on the CPU
    for a, b in zip(m_auto.parameters(), m_torch.parameters()): assert torch.equal(a, b)
    assert kernel_status()["available"] is False and "no-such-compiler" in kernel_status()["error"]


@needs_cc
def test_a_compiler_error_is_reported_with_its_message(fresh_kernel, monkeypatch):
    monkeypatch.setattr(uk, "KERNEL_SOURCE", "this is not C;")
    with pytest.raises(KernelUnavailable, match="could not compile"):
        uk.build_kernel(fresh_kernel / "x.so")
    assert not [f for f in fresh_kernel.iterdir() if f.name != ".lock"]   # no partial file left behind


def test_the_kernel_can_be_switched_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv("TRADINGRL_KERNEL", "off")
    assert load_kernel() is None and "TRADINGRL_KERNEL" in kernel_status()["error"]


def test_an_invalid_kernel_mode_is_a_value_error():
    with pytest.raises(ValueError, match="kernel"):
        AdaptiveUPGD(model().parameters(), kernel="fast")


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1.0, width=32))
def test_the_polynomial_gate_is_within_float32_rounding_of_the_sigmoid(x):
    got = float(gate_polynomial(torch.tensor([x]))[0])
    assert abs(got - 1 / (1 + __import__("math").exp(x))) < 5e-8


def test_the_polynomial_gate_clamps_its_argument():
    g = gate_polynomial(torch.tensor([-3.0, 0.0, 1.0, 7.0]))
    assert g[0] == g[1] and g[2] == g[3]


def test_pickle_and_deepcopy_keep_the_kernel_mode():
    import copy, pickle
    opt = AdaptiveUPGD(model().parameters(), kernel="torch")
    assert copy.deepcopy(opt).kernel == "torch" and pickle.loads(pickle.dumps(opt)).kernel == "torch"
