"""UPGD / AdaptiveUPGD robustness: non-finite gradients skip the step, float32 state for low-precision parameters, per-parameter step counts, flat buffers that survive a changing set of gradients."""

import pytest
import torch

from tradingrl_nb.adaptive_upgd import AdaptiveUPGD
from tradingrl_nb.upgd import UPGD

OPTS = [UPGD, AdaptiveUPGD]


def model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def grads_of(m, seed):
    gen = torch.Generator().manual_seed(seed)
    m.zero_grad()
    m(torch.randn(8, 6, generator=gen).to(next(m.parameters()).dtype)).pow(2).mean().backward()


# ---- item 5: non-finite gradients ----------------------------------------------------------------
@pytest.mark.parametrize("cls", OPTS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_gradient_element_skips_the_step_and_spreads_nowhere(cls, bad):
    m = model()
    opt = cls(m.parameters(), lr=1e-2, seed=0)
    for s in range(3):
        grads_of(m, s)
        opt.step()
    before = [p.detach().clone() for p in m.parameters()]
    state_before = {k: v.clone() for k, v in opt.state[m[0].weight].items() if torch.is_tensor(v)}
    grads_of(m, 3)
    m[0].weight.grad[2, 3] = bad
    with pytest.warns(RuntimeWarning, match="non-finite"): opt.step()
    assert opt.nonfinite_steps == 1
    assert all(torch.equal(p, b) for p, b in zip(m.parameters(), before))                  # the step is skipped
    assert all(torch.equal(v, state_before[k]) for k, v in opt.state[m[0].weight].items() if k in state_before)
    for s in range(4, 8):
        grads_of(m, s)
        opt.step()  # and training goes on
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert all(torch.isfinite(v).all() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    assert opt.nonfinite_steps == 1 and opt.metrics()["nonfinite_steps"] == 1


# ---- item 6: low precision -----------------------------------------------------------------------
@pytest.mark.parametrize("cls", OPTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_keep_float32_state(cls, dtype):
    "lr = 0 keeps the parameters fixed, so the state must follow a float32 run of the same gradients."
    lo, hi = model(dtype=dtype), model(dtype=dtype).float()
    kw = dict(lr=0.0, weight_decay=0.0, sigma=0.0, beta_utility=0.999, seed=0)
    o_lo, o_hi = cls(lo.parameters(), **kw), cls(hi.parameters(), **kw)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        for a, b in zip(lo.parameters(), hi.parameters()):
            g = torch.randn(a.shape, generator=gen).to(dtype)
            a.grad, b.grad = g, g.float()
        o_lo.step()
        o_hi.step()
    for a, b in zip(lo.parameters(), hi.parameters()):
        for k, v in o_hi.state[b].items():
            if not torch.is_tensor(v) or v.ndim == 0: continue
            assert o_lo.state[a][k].dtype == torch.float32, k
            assert torch.allclose(o_lo.state[a][k], v, rtol=1e-4, atol=1e-6), k


@pytest.mark.parametrize("cls", OPTS)
def test_low_precision_step_is_computed_in_float32(cls):
    "One step on bf16 parameters equals the float32 step rounded to bf16 once."
    lo, hi = model(dtype=torch.bfloat16), model(dtype=torch.bfloat16).float()
    kw = dict(lr=1e-1, weight_decay=1e-2, sigma=0.0, seed=0)
    o_lo, o_hi = cls(lo.parameters(), **kw), cls(hi.parameters(), **kw)
    gen = torch.Generator().manual_seed(1)
    for a, b in zip(lo.parameters(), hi.parameters()):
        g = torch.randn(a.shape, generator=gen).to(torch.bfloat16)
        a.grad, b.grad = g, g.float()
    o_lo.step()
    o_hi.step()
    for a, b in zip(lo.parameters(), hi.parameters()):
        assert torch.equal(a, b.to(torch.bfloat16))


# ---- item 7: per-parameter step counts, no rebuild -----------------------------------------------
def test_a_late_parameter_gets_its_own_bias_correction():
    "Its first AdaptiveUPGD update is at most lr per element (|m_hat / rms_hat| = 1, gate <= 0.5), as Adam's is."
    a, b = torch.nn.Parameter(torch.randn(50)), torch.nn.Parameter(torch.randn(50))
    lr = 1e-2
    opt = AdaptiveUPGD([a, b], lr=lr, weight_decay=0.0, sigma=0.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    for t in range(30):
        a.grad = torch.randn(50, generator=gen)
        b.grad = torch.randn(50, generator=gen) if t == 29 else None
        before = b.detach().clone()
        opt.step()
    assert int(opt.state[b]["step"]) == 1 and int(opt.state[a]["step"]) == 30
    assert (b - before).abs().max() <= lr * (1 + 1e-4)


@pytest.mark.parametrize("cls", OPTS)
def test_a_parameter_without_gradient_is_left_alone_and_nothing_is_rebuilt(cls):
    a, b = torch.nn.Parameter(torch.randn(20)), torch.nn.Parameter(torch.randn(30))
    opt = cls([a, b], lr=1e-2, seed=0)
    gen = torch.Generator().manual_seed(0)
    a.grad, b.grad = torch.randn(20, generator=gen), torch.randn(30, generator=gen)
    opt.step()
    ptrs = {k: v.data_ptr() for k, v in opt.state[a].items() if torch.is_tensor(v) and v.ndim > 0}
    for t in range(6):
        a.grad = torch.randn(20, generator=gen)
        b.grad = torch.randn(30, generator=gen) if t % 2 else None
        sb = {k: v.clone() for k, v in opt.state[b].items() if torch.is_tensor(v)}
        pb = b.detach().clone()
        opt.step()
        if t % 2 == 0:                                                   # no gradient: state and value untouched
            assert torch.equal(b, pb)
            assert all(torch.equal(opt.state[b][k], v) for k, v in sb.items())
    assert {k: v.data_ptr() for k, v in opt.state[a].items() if torch.is_tensor(v) and v.ndim > 0} == ptrs
    assert int(opt.state[a]["step"]) == 7 and int(opt.state[b]["step"]) == 4


@pytest.mark.parametrize("cls", OPTS)
def test_the_gpu_guard_without_host_reads_never_moves_on_a_bad_step(cls):
    "The sync-free guard (used on GPUs), forced on the CPU: a bad step moves nothing and spreads no NaN."
    m = model()
    opt = cls(m.parameters(), lr=1e-2, seed=0)
    opt._sync_free = lambda device: True
    for s in range(3):
        grads_of(m, s)
        opt.step()
    before = [p.detach().clone() for p in m.parameters()]
    grads_of(m, 3)
    m[0].weight.grad[2, 3] = float("nan")
    m[2].bias.grad[0] = float("inf")
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(m.parameters(), before))
    assert all(torch.isfinite(v).all() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    with pytest.warns(RuntimeWarning, match="non-finite"): met = opt.metrics()
    assert met["nonfinite_steps"] == 1
    for s in range(4, 8):
        grads_of(m, s)
        opt.step()
    assert all(torch.isfinite(p).all() for p in m.parameters()) and not torch.equal(m[0].weight, before[0])


def test_a_state_saved_before_issue_14_loads_and_continues_alike():
    "Old states kept rms = sqrt(EMA(g~^2 + eps^2)); loading converts it to exp_avg_sq and the run continues alike."
    a, b = model(dtype=torch.float64), model(dtype=torch.float64)
    kw = dict(lr=1e-2, weight_decay=1e-3, sigma=0.0, seed=0)
    oa = AdaptiveUPGD(a.parameters(), **kw)
    for s in range(5):
        grads_of(a, s)
        oa.step()
    sd = oa.state_dict()
    for st in sd["state"].values():
        t = int(st["step"])
        st["rms"] = (st.pop("exp_avg_sq") + 1e-16 * (1 - 0.999 ** t)).sqrt()
    b.load_state_dict(a.state_dict())
    ob = AdaptiveUPGD(b.parameters(), **kw)
    ob.load_state_dict(sd)
    for s in range(5, 9):
        grads_of(a, s)
        oa.step()
        grads_of(b, s)
        ob.step()
    for p, q in zip(a.parameters(), b.parameters()): assert torch.allclose(p, q, rtol=1e-9, atol=1e-12)


def test_fused_is_accepted_and_ignored():
    m = model()
    with pytest.warns(DeprecationWarning, match="ignored"): AdaptiveUPGD(m.parameters(), fused=True)
