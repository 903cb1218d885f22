"""VarianceGradientScaler statistics: scale-invariant noise measure, frozen statistics for tensors without gradients, overflow-proof statistics, the step-mode contract with DistributionalPPO, low-precision parameters."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tradingrl_nb.vgs import VarianceGradientScaler


def noisy_grads(n, steps, seed=0, signal=0.3):
    gen = torch.Generator().manual_seed(seed)
    return [signal + torch.randn(n, generator=gen) for _ in range(steps)]


def run_k(grads, scale, **kw):
    p = torch.nn.Parameter(torch.zeros(grads[0].shape))
    vgs = VarianceGradientScaler([p], warmup_steps=0, **kw)
    for g in grads:
        p.grad = g * scale
        vgs.step()
    return vgs.get_scaling_factor(), vgs.get_normalized_variance()


# ---- item 2: scale invariance --------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5])
def test_multiplying_the_loss_by_a_constant_leaves_k_unchanged(scale):
    "The same signal-to-noise process at gradient scale 1 ... 1e-5 gives the same factor (within 5%)."
    grads = noisy_grads(256, 60)
    k1, _ = run_k(grads, 1.0, alpha=0.1)
    ks, _ = run_k(grads, scale, alpha=0.1)
    assert ks == pytest.approx(k1, rel=0.05), (scale, ks, k1)


@settings(max_examples=20, deadline=None)
@given(st.floats(-6, 3), st.integers(0, 1000))
def test_normalized_variance_is_scale_free(log_scale, seed):
    grads = noisy_grads(64, 12, seed=seed, signal=0.5)
    _, nv1 = run_k(grads, 1.0)
    _, nvs = run_k(grads, 10.0 ** log_scale)
    assert nvs == pytest.approx(nv1, rel=1e-3)


# ---- item 3: tensors without gradients -----------------------------------------------------------
def test_a_tensor_without_gradient_keeps_its_statistics_and_leaves_the_aggregate():
    gen = torch.Generator().manual_seed(0)
    live, dead = torch.nn.Parameter(torch.zeros(200)), torch.nn.Parameter(torch.zeros(200))
    vgs = VarianceGradientScaler([live, dead], warmup_steps=0, reference="absolute")     # the statistic's own factor
    alone = VarianceGradientScaler([torch.nn.Parameter(torch.zeros(200))], warmup_steps=0, reference="absolute")
    for t in range(900):
        g = 1.0 + 0.5 * torch.randn(200, generator=gen)
        live.grad = g.clone()
        dead.grad = torch.randn(200, generator=gen) if t < 50 else None      # stops receiving gradients at t = 50
        vgs.step()
        alone._params[0].grad = g.clone()
        alone.step()
        if t == 49: frozen = [x[1].clone() for x in (vgs.state_dict()["grad_mean_ema"], vgs.state_dict()["grad_sq_ema"])]
    sd = vgs.state_dict()
    assert torch.equal(sd["grad_mean_ema"][1], frozen[0]) and torch.equal(sd["grad_sq_ema"][1], frozen[1])
    # the live tensor alone decides the factor, as if the dead one did not exist
    assert vgs.get_normalized_variance() == pytest.approx(alone.get_normalized_variance(), rel=1e-5)
    assert vgs.get_scaling_factor() == pytest.approx(alone.get_scaling_factor(), rel=1e-5)


def test_a_tensor_that_never_had_a_gradient_is_not_in_the_aggregate():
    gen = torch.Generator().manual_seed(1)
    used, unused = torch.nn.Parameter(torch.zeros(50)), torch.nn.Parameter(torch.zeros(5000))
    vgs = VarianceGradientScaler([used, unused], warmup_steps=0)
    alone = VarianceGradientScaler([torch.nn.Parameter(torch.zeros(50))], warmup_steps=0)
    for _ in range(30):
        g = 1.0 + torch.randn(50, generator=gen)
        used.grad = g.clone()
        vgs.step()
        alone._params[0].grad = g.clone()
        alone.step()
    assert vgs.get_normalized_variance() == pytest.approx(alone.get_normalized_variance(), rel=1e-5)


def test_bias_correction_follows_each_tensors_own_count():
    "A tensor whose first gradient arrives late is bias-corrected by its own count: a constant gradient reads nv 0."
    a, b = torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(10))
    vgs = VarianceGradientScaler([a, b], beta=0.9, warmup_steps=0)
    for t in range(40):
        a.grad = torch.ones(10)
        b.grad = torch.full((10,), 2.0) if t >= 35 else None
        vgs.step()
    assert vgs.normalized_variance_per_element().abs().max() < 1e-4


# ---- item 4: overflow ----------------------------------------------------------------------------
@pytest.mark.parametrize("reference", ["absolute", "baseline"])
def test_one_huge_gradient_does_not_pin_the_factor_forever(reference):
    "Feed 1e30 once: the statistics stay finite and k returns to what it would have been without the spike (the baseline too)."
    grads = noisy_grads(64, 1500, seed=3, signal=1.0)
    p, q = torch.nn.Parameter(torch.zeros(64)), torch.nn.Parameter(torch.zeros(64))
    spiked = VarianceGradientScaler([p], beta=0.9, warmup_steps=0, alpha=0.1, reference=reference)
    clean = VarianceGradientScaler([q], beta=0.9, warmup_steps=0, alpha=0.1, reference=reference)
    for t, g in enumerate(grads):
        p.grad = torch.full((64,), 1e30) if t == 100 else g.clone()
        spiked.step()
        q.grad = g.clone()
        clean.step()
    assert all(torch.isfinite(x).all() for x in spiked.state_dict()["grad_sq_ema"])
    assert spiked.get_scaling_factor() == pytest.approx(clean.get_scaling_factor(), rel=0.05)


# ---- the step-mode contract with DistributionalPPO ------------------------------------------------
def test_get_scaling_factor_is_what_scale_gradients_applies_and_touches_nothing():
    grads = noisy_grads(32, 20)
    p = torch.nn.Parameter(torch.zeros(32))
    vgs = VarianceGradientScaler([p], alpha=1.0, warmup_steps=2, reference="absolute")
    for g in grads:
        p.grad = g.clone()
        vgs.step()
    p.grad = grads[0].clone()
    k = vgs.get_scaling_factor()
    assert k < 1.0 and torch.equal(p.grad, grads[0])                   # reading the factor leaves gradients alone
    assert vgs.scale_gradients() == k and torch.allclose(p.grad, grads[0] * k)


def test_step_treats_gradients_as_raw_unless_scaled_since_the_previous_step():
    "step mode: get_scaling_factor() then step() records the raw gradient; a scale_gradients() is undone only once."
    grads = noisy_grads(32, 30, seed=5)
    p, q = torch.nn.Parameter(torch.zeros(32)), torch.nn.Parameter(torch.zeros(32))
    a = VarianceGradientScaler([p], alpha=1.0, warmup_steps=2)
    ref = VarianceGradientScaler([q], alpha=1.0, warmup_steps=2)
    for t, g in enumerate(grads):
        p.grad = g.clone()
        if t == 10:
            a.scale_gradients()                                      # gradient mode once ...
            a.step()
            p.grad = grads[t].clone()
            a._params[0].grad = p.grad
        else:
            a.get_scaling_factor()                                   # ... then step mode: never scales
        if t != 10: a.step()
        q.grad = g.clone()
        ref.step()
    for x, y in zip(a.state_dict()["grad_mean_ema"] + a.state_dict()["grad_sq_ema"],
                    ref.state_dict()["grad_mean_ema"] + ref.state_dict()["grad_sq_ema"]):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-7)


def test_a_scale_without_a_step_is_forgotten_by_load_state_dict_and_disable():
    p = torch.nn.Parameter(torch.zeros(8))
    vgs = VarianceGradientScaler([p], alpha=1.0, warmup_steps=0)
    for g in noisy_grads(8, 10):
        p.grad = g
        vgs.step()
    p.grad = torch.ones(8)
    k = vgs.scale_gradients()
    assert k < 1
    vgs.load_state_dict(vgs.state_dict())                            # a reload in between: gradients are raw again
    p.grad = torch.ones(8)
    before = vgs.state_dict()["grad_mean_ema"][0].clone()
    vgs.step()
    assert torch.allclose(vgs.state_dict()["grad_mean_ema"][0], 0.99 * before + 0.01 * torch.ones(8), rtol=1e-5)


# ---- low precision -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_get_float32_statistics(dtype):
    grads = noisy_grads(128, 300, seed=2)
    p = torch.nn.Parameter(torch.zeros(128, dtype=dtype))
    q = torch.nn.Parameter(torch.zeros(128))
    lo, hi = VarianceGradientScaler([p], warmup_steps=0, beta=0.999), VarianceGradientScaler([q], warmup_steps=0, beta=0.999)
    for g in grads:
        p.grad = g.to(dtype)
        lo.step()
        q.grad = g.to(dtype).float()
        hi.step()
    assert lo.state_dict()["grad_sq_ema"][0].dtype == torch.float32
    assert lo.get_normalized_variance() == pytest.approx(hi.get_normalized_variance(), rel=1e-4)
