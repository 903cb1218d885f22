"""The compiled AdaptiveUPGD CPU kernel (issue 14, item 8): agreement with the torch path, dispatch, the on-disk
cache, a clear fallback where no compiler exists, the thread split, and the polynomial gate."""
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

import tradingrl_nb.upgd as upgd_mod
import tradingrl_nb.upgd_kernel as uk
from tradingrl_nb.upgd import AdaptiveUPGD
from tradingrl_nb.upgd_kernel import KernelUnavailable, gate_polynomial, kernel_status, load_kernel


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
    "An empty kernel cache for this test and a process that has not looked for the kernel yet (restored afterwards)."
    monkeypatch.setenv("TRADINGRL_KERNEL_CACHE", str(tmp_path))
    monkeypatch.delenv("TRADINGRL_KERNEL", raising=False)
    uk._forget_kernel(); upgd_mod._kernel_warned.clear()
    yield tmp_path
    uk._forget_kernel(); upgd_mod._kernel_warned.clear()


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


def test_the_default_uses_the_kernel_on_the_cpu(monkeypatch):
    "kernel='auto' runs the compiled passes for a float32 CPU model (counted), kernel='torch' never does."
    calls = []
    orig = uk.Kernel.pass1
    monkeypatch.setattr(uk.Kernel, "pass1", lambda self, *a: calls.append(1) or orig(self, *a))
    run("auto", steps=3)
    assert len(calls) == 3
    run("torch", steps=3)
    assert len(calls) == 3


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
        for a, b in zip(go("auto", mode), go("torch", mode)): assert torch.equal(a, b), mode


def test_a_state_moves_between_the_two_paths():
    "A checkpoint of the kernel path resumes on the torch path (and back) and continues alike."
    m, o = run("compiled", steps=10)
    sd, params = o.state_dict(), {k: v.clone() for k, v in m.state_dict().items()}
    cont = []
    for kernel in ("compiled", "torch"):
        m2 = model(); m2.load_state_dict(params)
        o2 = AdaptiveUPGD(m2.parameters(), lr=1e-2, weight_decay=1e-2, seed=3, kernel=kernel); o2.load_state_dict(sd)
        gen = torch.Generator().manual_seed(7)
        for _ in range(10):
            for p in m2.parameters(): p.grad = torch.randn(p.shape, generator=gen) * 1e-2
            o2.step()
        cont.append(torch.cat([p.detach().flatten() for p in m2.parameters()]))
    assert torch.allclose(cont[0], cont[1], rtol=1e-5, atol=1e-7)


def test_the_thread_split_changes_no_bit(monkeypatch):
    "Large buckets are split over threads; element-wise work and an exact min/max make the result identical."
    monkeypatch.setattr(uk, "MIN_CHUNK", 64)
    outs = []
    for threads in (1, 3):
        n = torch.get_num_threads(); torch.set_num_threads(threads)
        try: m, _ = run("compiled", steps=5)
        finally: torch.set_num_threads(n)
        outs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_the_kernel_is_compiled_once_and_then_loaded_from_the_cache(fresh_kernel):
    st1 = kernel_status()
    assert st1["available"] and st1["compiled"] and st1["path"].startswith(str(fresh_kernel))
    uk._forget_kernel()                                       # a new process, as far as the loader can tell
    st2 = kernel_status()
    assert st2["available"] and not st2["compiled"] and st2["path"] == st1["path"]
    assert len(list(fresh_kernel.glob("*.so"))) == 1 and not list(fresh_kernel.glob(".*.tmp"))


def test_a_changed_kernel_gets_a_new_cache_file(fresh_kernel, monkeypatch):
    before = uk.kernel_path()
    monkeypatch.setattr(uk, "KERNEL_SOURCE", uk.KERNEL_SOURCE + "\n/* changed */\n")
    assert uk.kernel_path() != before


def test_without_a_compiler_auto_warns_once_and_compiled_says_why(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_kernel / "no-such-compiler"))
    with pytest.raises(KernelUnavailable, match="no-such-compiler"):
        AdaptiveUPGD(model().parameters(), kernel="compiled")
    uk._forget_kernel()
    with pytest.warns(RuntimeWarning, match="compiled CPU kernel is unavailable"):
        m_auto, _ = run("auto", steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # once per process, not per step or per optimizer
        run("auto", steps=2)
    m_torch, _ = run("torch", steps=3)
    for a, b in zip(m_auto.parameters(), m_torch.parameters()): assert torch.equal(a, b)
    assert kernel_status()["available"] is False and "no-such-compiler" in kernel_status()["error"]


def test_a_compiler_error_is_reported_with_its_message(fresh_kernel, monkeypatch):
    monkeypatch.setattr(uk, "KERNEL_SOURCE", "this is not C;")
    with pytest.raises(KernelUnavailable, match="could not compile"):
        uk.build_kernel(fresh_kernel / "x.so")
    assert not list(fresh_kernel.iterdir())                   # no partial file left behind


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
