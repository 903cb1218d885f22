"""UPGD and AdaptiveUPGD: reference agreement, the paper's literal rule, robustness, state round trips, metrics,
the fused path and a CUDA path without host synchronization."""
import copy, io, math, pickle

import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck

from tradingrl_nb.adaptive_upgd import AdaptiveUPGD
from tradingrl_nb.upgd import UPGD
from tradingrl_nb.upgd_reference import AdaptiveUPGDLoop, UPGDLoop


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def train(model, opt, steps=20, seed=1, dtype=torch.float64):
    gx = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 5, generator=gx, dtype=dtype)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


KW = dict(lr=1e-2, weight_decay=1e-2, beta_utility=0.9, sigma=0.05)
# Two implementations of one rule in float64, run in this process, differ only by rounding: a few ulp per step (about
# 1e-16 after 20 steps here, on parameters of size 0.5). Another machine's vector width or libm changes which bits, not
# their size, so 1e-12 leaves 10^4 of room, and a rule error still shows (a step moves a weight by up to lr = 1e-2).
SAME_RULE = dict(rtol=0, atol=1e-12)


# ---- agreement with the plain loop references --------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"weight_decay": 0.0}, {"sigma": 0.0}, {"beta_utility": 0.999}])
def test_upgd_matches_loop_reference(extra):
    a, b = mlp(), mlp()
    kw = {**KW, **extra}
    pa = train(a, UPGD(a.parameters(), **kw, seed=3))
    pb = train(b, UPGDLoop(b.parameters(), **kw, seed=3, flat_noise=True))
    assert torch.allclose(pa, pb, **SAME_RULE)
    assert not torch.allclose(pa, torch.cat([p.detach().flatten() for p in mlp().parameters()]))   # it moved


@pytest.mark.parametrize("extra", [{}, {"adaptive_noise": False}, {"adaptive_noise": False, "sigma": 0.0},
                                   {"noise_beta": 0.5, "min_noise_std": 1e-3}, {"beta1": 0.0, "beta2": 0.5}])
def test_adaptive_upgd_matches_loop_reference(extra):
    a, b = mlp(), mlp()
    kw = {**KW, **extra}
    pa = train(a, AdaptiveUPGD(a.parameters(), **kw, seed=4))
    pb = train(b, AdaptiveUPGDLoop(b.parameters(), **kw, seed=4))
    assert torch.allclose(pa, pb, **SAME_RULE)


def test_two_param_groups_share_one_global_utility_normalization():
    "Utilities are normalized over all tensors of all groups: splitting into groups with equal settings changes nothing."
    for cls, kw in ((UPGD, {**KW, "sigma": 0.0}), (AdaptiveUPGD, {**KW, "sigma": 0.0, "adaptive_noise": False})):
        a, b = mlp(), mlp()                                         # (noise streams differ per group: compare without)
        pa = train(a, cls(a.parameters(), **kw))
        ps = list(b.parameters())
        pb = train(b, cls([{"params": ps[:2]}, {"params": ps[2:]}], **kw))
        assert torch.allclose(pa, pb, **SAME_RULE), cls


def test_param_groups_keep_their_own_learning_rates():
    a = mlp()
    ps = list(a.parameters())
    before = [p.detach().clone() for p in ps]
    opt = AdaptiveUPGD([{"params": ps[:2], "lr": 0.0}, {"params": ps[2:]}], lr=1e-2, weight_decay=0.0, sigma=0.0)
    train(a, opt, steps=3)
    assert all(torch.equal(p, q) for p, q in zip(ps[:2], before[:2]))
    assert not any(torch.equal(p, q) for p, q in zip(ps[2:], before[2:]))


def paper_upgd_step(params, state, lr, wd, beta):
    "The public code's UPGD step, literally (two loops, raw max, no guard), without noise."
    global_max = torch.tensor(-torch.inf, dtype=torch.float64)
    for p in params:
        st_ = state.setdefault(p, {"step": 0, "u": torch.zeros_like(p)})
        st_["step"] += 1
        st_["u"].mul_(beta).add_(-p.grad * p.detach(), alpha=1 - beta)
        if st_["u"].max() > global_max: global_max = st_["u"].max()
    with torch.no_grad():
        for p in params:
            st_ = state[p]
            s = torch.sigmoid((st_["u"] / (1 - beta ** st_["step"])) / global_max)
            p.mul_(1 - lr * wd).add_(p.grad * (1 - s), alpha=-2 * lr)


def test_upgd_equals_the_papers_literal_rule_where_that_is_defined():
    "With beta_utility=0 (no bias correction to disagree about) and a positive max utility, the rules coincide."
    a, b = mlp(), mlp()
    opt = UPGD(a.parameters(), lr=1e-2, weight_decay=1e-2, beta_utility=0.0, sigma=0.0)
    state, gx = {}, torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(32, 5, generator=gx, dtype=torch.float64)
        for m in (a, b):
            m.zero_grad()
            m(x).pow(2).mean().backward()
        assert max(float((-p.grad * p.detach()).max()) for p in b.parameters()) > 0
        opt.step()
        paper_upgd_step(list(b.parameters()), state, 1e-2, 1e-2, 0.0)
    for p, q in zip(a.parameters(), b.parameters()): assert torch.allclose(p, q, **SAME_RULE)


# ---- robustness --------------------------------------------------------------------------------
def one_step(cls, params, grads, **kw):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    for p, g in zip(ps, grads): p.grad = g.clone()
    opt = cls(ps, **kw)
    opt.step()
    return [p.detach() - p0 for p, p0 in zip(ps, params)], opt


W0 = [torch.tensor([[0.5, -1.0, 2.0], [1.5, -0.3, 0.7]]), torch.tensor([0.2, -0.4])]


@pytest.mark.parametrize("cls", [UPGD, AdaptiveUPGD])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_gradients_give_finite_updates(cls, dtype):
    w = [x.to(dtype) for x in W0]
    d, opt = one_step(cls, w, [torch.zeros_like(x) for x in w], lr=0.1, weight_decay=0.0, sigma=0.0)
    assert all(torch.isfinite(x).all() for x in d)
    assert max(float(x.abs().max()) for x in d) < 1e-2          # no gradient, (almost) no move
    for _ in range(3): opt.step()                                  # and it stays finite over steps
    assert all(torch.isfinite(p).all() for g in opt.param_groups for p in g["params"])


@pytest.mark.parametrize("cls", [UPGD, AdaptiveUPGD])
def test_all_equal_utilities_give_half_open_gate(cls):
    "-g*theta equal everywhere: AdaptiveUPGD's min-max normalization gives x=0 (gate 1/2)."
    w = W0
    g = [-torch.ones_like(x) / x for x in w]
    d, _ = one_step(cls, w, g, lr=0.1, weight_decay=0.0, sigma=0.0)
    if cls is AdaptiveUPGD:                                        # first Adam step: m_hat/sqrt(v_hat) = sign(g)
        for x, gg in zip(d, g): assert torch.allclose(x, -2 * 0.1 * 0.5 * gg.sign(), atol=1e-6)
    else:                                                          # u/max(u) = 1 everywhere: 1 - s = 1 - sigmoid(1)
        for x, gg in zip(d, g): assert torch.allclose(x, -2 * 0.1 * (1 - torch.sigmoid(torch.tensor(1.0))) * gg, atol=1e-6)


def test_non_positive_max_utility_opens_the_upgd_gate():
    "No weight has positive utility: UPGD takes the full (plain SGD x2) step instead of NaN or a flipped gate."
    w = W0
    g = [x.sign() * (x.abs() + 1) for x in w]                      # -g*theta < 0 everywhere
    d, _ = one_step(UPGD, w, g, lr=0.1, weight_decay=0.0, sigma=0.0)
    for x, gg in zip(d, g): assert torch.allclose(x, -2 * 0.1 * gg, atol=1e-6)
    d, _ = one_step(AdaptiveUPGD, w, g, lr=0.1, weight_decay=0.0, sigma=0.0)
    assert all(torch.isfinite(x).all() and x.abs().max() <= 0.1 + 1e-6 for x in d)


def test_first_step_does_not_saturate_the_gate():
    "The public code divides by the raw max at step 1: 1 - s is ~0 or ~1. Ours gives the soft gate u/max(u)."
    w, g = W0, [torch.tensor([[1.0, 2.0, -0.5], [0.3, -1.0, 0.2]]), torch.tensor([1.0, 0.5])]
    d, _ = one_step(UPGD, w, g, lr=0.1, weight_decay=0.0, sigma=0.0, beta_utility=0.999)
    u = torch.cat([(-gg * x).flatten() for gg, x in zip(g, w)])
    gate = torch.cat([(x / (-2 * 0.1 * gg)).flatten() for x, gg in zip(d, g)])
    assert torch.allclose(gate, 1 - torch.sigmoid(u / u.max()), atol=1e-5)
    assert gate.min() > 0.26 and gate.max() < 0.75


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=12),
       st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=12),
       st.floats(1e-4, 1.0), st.booleans())
def test_adaptive_first_step_is_bounded(theta, grad, lr, adaptive):
    "Property: from fresh state |theta' - theta*(1 - lr*wd)| <= 2*lr*(1-s) <= lr for any finite input."
    n = min(len(theta), len(grad))
    th, g = torch.tensor(theta[:n], dtype=torch.float64), torch.tensor(grad[:n], dtype=torch.float64)
    d, _ = one_step(AdaptiveUPGD, [th], [g], lr=lr, weight_decay=0.0, sigma=0.0, adaptive_noise=adaptive)
    assert torch.isfinite(d[0]).all()
    assert float(d[0].abs().max()) <= lr * (1 + 1e-9)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=12),
       st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=12))
def test_upgd_gate_stays_in_unit_interval(theta, grad):
    "Property: UPGD's step is the gradient times a gate in [0, 1] (times 2*lr), whatever the utilities' signs."
    n = min(len(theta), len(grad))
    th, g = torch.tensor(theta[:n], dtype=torch.float64), torch.tensor(grad[:n], dtype=torch.float64)
    d, _ = one_step(UPGD, [th], [g], lr=0.1, weight_decay=0.0, sigma=0.0)
    assert torch.isfinite(d[0]).all()
    assert (d[0].abs() <= 0.2 * g.abs() * (1 + 1e-9) + 1e-9).all()
    assert (d[0] * g <= 0).all()


def test_parameters_without_gradients_are_skipped_and_can_join_later():
    a = mlp()
    ps = list(a.parameters())
    opt = AdaptiveUPGD(ps, **KW, seed=0)
    frozen = ps[0].detach().clone()
    for t in range(4):
        for p in ps: p.grad = torch.randn_like(p)
        if t < 2: ps[0].grad = None
        opt.step()
        if t < 2: assert torch.equal(ps[0], frozen) and "utility" not in opt.state[ps[0]]
    assert int(opt.state[ps[0]]["step"]) == 2 and not torch.equal(ps[0], frozen)   # joined with its own count (issue 14)
    assert int(opt.state[ps[1]]["step"]) == 4
    assert all(torch.isfinite(p).all() for p in ps)


def test_invalid_arguments_raise_value_error():
    p = [torch.nn.Parameter(torch.zeros(2))]
    for kw in ({"lr": -1.0}, {"beta_utility": 1.0}, {"sigma": -0.1}, {"weight_decay": -1.0}):
        with pytest.raises(ValueError): UPGD(p, **kw)
    for kw in ({"beta1": 1.0}, {"beta2": -0.1}, {"eps": 0.0}, {"noise_beta": 1.0}, {"min_noise_std": -1.0}):
        with pytest.raises(ValueError): AdaptiveUPGD(p, **kw)
    q = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))
    q.grad = torch.zeros_like(q)
    o = AdaptiveUPGD([q])
    o.step()  # float16 works since issue 14: float32 state
    assert o.state[q]["exp_avg_sq"].dtype == torch.float32 and torch.isfinite(q).all()
    r = torch.nn.Parameter(torch.zeros(2, dtype=torch.int64).float().long(), requires_grad=False)
    with pytest.raises(ValueError, match="floating-point"): AdaptiveUPGD([r]).step()


# ---- state -------------------------------------------------------------------------------------
# torch.equal below holds by construction: both runs in this process, same state, seed and noise stream, on the CPU.
@pytest.mark.parametrize("cls", [UPGD, AdaptiveUPGD])
def test_state_dict_round_trip_gives_identical_noisy_steps(cls):
    a, b = mlp(dtype=torch.float32), mlp(dtype=torch.float32)
    oa = cls(a.parameters(), **KW, seed=7)
    train(a, oa, steps=5, dtype=torch.float32)
    b.load_state_dict(a.state_dict())
    ob = cls(b.parameters(), **KW, seed=12345)                    # a different seed: the state must carry the RNG
    buf = io.BytesIO()
    torch.save(oa.state_dict(), buf)
    buf.seek(0)
    ob.load_state_dict(torch.load(buf, weights_only=True))
    pa, pb = train(a, oa, steps=5, seed=2, dtype=torch.float32), train(b, ob, steps=5, seed=2, dtype=torch.float32)
    assert torch.equal(pa, pb)


@pytest.mark.parametrize("cls", [UPGD, AdaptiveUPGD])
def test_loaded_state_does_not_alias_the_source(cls):
    "torch's load_state_dict keeps the source tensors; the next step copies them, so both optimizers stay independent."
    a, b = mlp(), mlp()
    oa = cls(a.parameters(), **KW, seed=1)
    train(a, oa, steps=3)
    ob = cls(b.parameters(), **KW, seed=1)
    ob.load_state_dict(oa.state_dict())
    b.load_state_dict(a.state_dict())
    snapshot = copy.deepcopy(oa.state_dict()["state"])
    train(b, ob, steps=3)
    after = oa.state_dict()["state"]
    for i in snapshot:
        for k, v in snapshot[i].items():
            if torch.is_tensor(v): assert torch.equal(v, after[i][k]), (i, k)


def test_state_dict_tensors_have_their_own_storage_for_safetensors():
    import safetensors.torch
    a = mlp(dtype=torch.float32)
    opt = AdaptiveUPGD(a.parameters(), **KW, seed=0)
    train(a, opt, steps=2, dtype=torch.float32)
    sd = opt.state_dict()
    flat = {f"{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    flat.update({f"rng.{k}": v for k, v in sd["rng"].items() if torch.is_tensor(v)})
    data = safetensors.torch.save(flat)                            # raises on shared storage
    assert set(safetensors.torch.load(data)) == set(flat)
    assert set(sd["state"][0]) == {"step", "utility", "exp_avg", "exp_avg_sq", "grad_norm_ema"}


def test_pickle_and_deepcopy_preserve_the_noise_stream():
    a = mlp()
    opt = AdaptiveUPGD(a.parameters(), **KW, seed=3)
    train(a, opt, steps=2)
    b = copy.deepcopy(a)
    ob = AdaptiveUPGD(b.parameters(), **KW)
    ob.load_state_dict(pickle.loads(pickle.dumps(opt.state_dict())))
    assert torch.equal(train(a, opt, steps=3, seed=9), train(b, ob, steps=3, seed=9))
    c, d = copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))        # the optimizer object itself
    assert c._seed == d._seed == opt._seed
    assert torch.equal(c._generator(torch.device("cpu")).get_state(), opt._generator(torch.device("cpu")).get_state())


def test_seed_none_is_reproducible_under_torch_manual_seed():
    def run():
        torch.manual_seed(42)
        a = mlp()
        return train(a, UPGD(a.parameters(), **KW), steps=3)
    assert torch.equal(run(), run())


def test_closure_is_called_with_grad_enabled():
    a = mlp()
    opt = AdaptiveUPGD(a.parameters(), **KW)
    x = torch.randn(4, 5, dtype=torch.float64)
    def closure():
        opt.zero_grad()
        loss = a(x).pow(2).mean()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.requires_grad


# ---- metrics -----------------------------------------------------------------------------------
def test_metrics_report_noise_gradient_and_their_ratio():
    p = torch.nn.Parameter(torch.zeros(400))
    opt = UPGD([p], sigma=0.01)
    assert opt.metrics()["step"] == 0
    p.grad = torch.full((400,), 0.5)
    opt.step()
    m = opt.metrics()
    assert m["grad_norm"] == pytest.approx(0.5 * 20) and m["noise_std"] == pytest.approx(0.01)
    assert m["noise_to_signal"] == pytest.approx(0.01 * 20 / 10) and m["step"] == 1
    opt = AdaptiveUPGD([p], sigma=0.01)
    p.grad = torch.full((400,), 0.5)
    opt.step()
    m = opt.metrics()
    assert m["noise_std"] == pytest.approx(0.01 * 0.5) and m["noise_to_signal"] == pytest.approx(0.01)
    p.grad = torch.zeros(400)
    opt2 = AdaptiveUPGD([p], sigma=0.01, min_noise_std=1e-6)
    opt2.step()
    assert opt2.metrics()["noise_to_signal"] == math.inf and opt2.metrics()["noise_std"] == pytest.approx(1e-6)


# ---- CUDA paths ----------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("make", [lambda ps: AdaptiveUPGD(ps, seed=0), lambda ps: AdaptiveUPGD(ps, adaptive_noise=False, seed=0),
                                  lambda ps: UPGD(ps, seed=0)])
def test_cuda_step_never_synchronizes(make):
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8)).to(dev)
    opt = make(model.parameters())
    x = torch.randn(128, 64, device=dev)
    model(x).square().mean().backward()
    opt.step()  # the first step builds the state
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3): opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", [UPGD, AdaptiveUPGD])
def test_cuda_matches_cpu_without_noise(cls):
    a, b = mlp(dtype=torch.float64), mlp(dtype=torch.float64).cuda()
    kw = {**KW, "sigma": 0.0, **({"adaptive_noise": False} if cls is AdaptiveUPGD else {})}   # no noise at all
    oa, ob = cls(a.parameters(), **kw), cls(b.parameters(), **kw)
    gx = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(32, 5, generator=gx, dtype=torch.float64)
        for m, o, xx in ((a, oa, x), (b, ob, x.cuda())):
            o.zero_grad()
            m(xx).pow(2).mean().backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()): assert torch.allclose(p, q.cpu(), rtol=0, atol=1e-10)
