"""SGLD's Langevin noise (issue 12 item 6): scaled to the gradient (the default) it never makes the attack weaker than
uniform noise of the same radius, at initialisation (tiny action sensitivity) or after training; the reference's
absolute noise stays reachable (`noise="absolute"`) and is exactly the reference's update."""
import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from tradingrl_nb.data import synthetic_market
from tradingrl_nb.vec_env import TradingVecEnv
from tradingrl_nb.policy import RecurrentQuantilePolicy
from tradingrl_nb.ppo import DistributionalPPO
from tradingrl_nb.sappo import (AttackedPolicy, RobustKLRegularizer, SAPPOConfig, actor_mean, gaussian_kl,
                                perturb_observations)


def init_policy(seed, obs_dim=12, hidden=32):
    "A policy as DistributionalPPO builds it (orthogonal init, 0.01 gain on the action layer): tiny action sensitivity."
    th.manual_seed(seed)
    return RecurrentQuantilePolicy(spaces.Box(-10, 10, (obs_dim,), np.float32), spaces.Box(-1, 1, (1,), np.float32),
                                   lambda _: 1e-3, lstm_hidden_size=hidden, n_quantiles=4)


def mean_kl(pol, obs, method, eps, seeds, states=None, **kw):
    out = []
    for s in seeds:
        th.manual_seed(s)
        x = perturb_observations(pol, obs, eps, method, states=states, **kw)
        with th.no_grad():
            out.append(float(gaussian_kl(actor_mean(pol, obs, states)[0], actor_mean(pol, x, states)[0], pol.log_std).mean()))
    return float(np.mean(out))


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.2])
@pytest.mark.parametrize("seed", [0, 1])
def test_sgld_beats_random_noise_at_initialisation(eps, seed):
    pol = init_policy(seed)
    obs = th.randn(16, 8, 12, generator=th.Generator().manual_seed(seed))
    kl_rand = mean_kl(pol, obs, "random", eps, range(4))
    kl_sgld = mean_kl(pol, obs, "sgld", eps, range(4))
    kl_pgd = mean_kl(pol, obs, "pgd", eps, range(4))
    assert kl_sgld >= kl_rand, (kl_sgld, kl_rand)
    assert kl_sgld >= 0.5 * kl_pgd, (kl_sgld, kl_pgd)          # the noise perturbs the ascent, it does not replace it


@pytest.fixture(scope="module")
def trained():
    env = TradingVecEnv(synthetic_market(800, seed=4), n_envs=4, seed=0, window=1, episode_length=64)
    m = DistributionalPPO("MlpLstmPolicy", env, n_steps=32, batch_size=64, n_epochs=2, sequence_length=16, seed=0,
                          device="cpu", policy_kwargs=dict(lstm_hidden_size=16))
    m.learn(32 * 4 * 3)
    obs = th.as_tensor(np.stack([env.reset() for _ in range(1)] + [env.step(np.zeros((4, 1)))[0] for _ in range(23)]),
                       dtype=th.float32)                       # [24, 4, obs_dim], real observations
    return m, obs


@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_sgld_beats_random_noise_after_training(trained, eps):
    m, obs = trained
    pol = m.policy
    kl_rand = mean_kl(pol, obs, "random", eps, range(4))
    kl_sgld = mean_kl(pol, obs, "sgld", eps, range(4))
    assert kl_sgld >= kl_rand, (kl_sgld, kl_rand)


@pytest.mark.parametrize("noise", ["relative", "absolute"])
def test_noise_option_is_validated_and_carried(noise):
    assert SAPPOConfig(noise=noise).noise == noise
    with pytest.raises(ValueError, match="noise"): SAPPOConfig(noise="loud")
    with pytest.raises(ValueError, match="noise"): perturb_observations(init_policy(0), th.zeros(2, 1, 12), 0.1, noise="loud")
    with pytest.raises(ValueError, match="noise"): AttackedPolicy(init_policy(0), "sgld", 0.1, noise="loud")


def reference_sgld(pol, obs, eps, steps, beta, states=None):
    "The reference's update (huanzhang12/SA_PPO `get_state_kl_bound_sgld`), written out: absolute Langevin noise."
    alpha = eps / steps
    with th.no_grad(): mu0, _ = actor_mean(pol, obs, states)
    x = obs + th.randn_like(obs).sign() * alpha
    x = th.clamp(x, obs - eps, obs + eps)
    for i in range(steps):
        x = x.detach().requires_grad_(True)
        mu, _ = actor_mean(pol, x, states)
        obj = ((mu - mu0) * th.exp(-pol.log_std.detach())).pow(2).sum()
        g, = th.autograd.grad(obj, x)
        g = g + th.randn_like(g) * math.sqrt(2 * alpha * beta) / (i + 2)
        x = th.clamp(x.detach() + g.sign() * alpha, obs - eps, obs + eps)
    return x.detach()


@pytest.mark.parametrize("beta", [1e-5, 1.0])
def test_absolute_noise_is_the_reference_update(beta):
    pol = init_policy(3, obs_dim=6, hidden=16)
    obs = th.randn(8, 3, 6)
    th.manual_seed(11)
    want = reference_sgld(pol, obs, 0.1, 5, beta)
    th.manual_seed(11)
    got = perturb_observations(pol, obs, 0.1, "sgld", steps=5, beta=beta, noise="absolute")
    agree = float((got == want).float().mean())
    assert agree > 0.999, agree                                 # equal but for a sign of a gradient within rounding of 0


def test_relative_noise_is_invariant_to_the_scale_of_the_actions():
    "Scaling the action layer by c (sigma kept) scales the objective's gradient by c^2 but does not change the relative-noise attack."
    a, b = init_policy(5, obs_dim=6, hidden=16), init_policy(5, obs_dim=6, hidden=16)
    with th.no_grad():
        b.action_net.weight.mul_(1000.0)
        b.action_net.bias.mul_(1000.0)
    obs = th.randn(8, 3, 6)
    th.manual_seed(2)
    xa = perturb_observations(a, obs, 0.1, "sgld", steps=5, beta=1e-3)
    th.manual_seed(2)
    xb = perturb_observations(b, obs, 0.1, "sgld", steps=5, beta=1e-3)
    assert float((xa == xb).float().mean()) > 0.99
    th.manual_seed(2)
    ya = perturb_observations(a, obs, 0.1, "sgld", steps=5, beta=1e-3, noise="absolute")
    th.manual_seed(2)
    yb = perturb_observations(b, obs, 0.1, "sgld", steps=5, beta=1e-3, noise="absolute")
    assert float((ya == yb).float().mean()) < 0.9               # the absolute noise drowns the small policy's gradient


def test_regularizer_uses_the_configured_noise():
    pol = init_policy(6, obs_dim=6, hidden=16)
    obs = th.randn(8, 3, 6)
    batch = dict(obs=obs, states=None, mask=None)
    kl = {}
    for noise in ("relative", "absolute"):
        th.manual_seed(0)
        kl[noise] = float(RobustKLRegularizer(SAPPOConfig(eps=0.05, kappa=1.0, noise=noise)).loss(pol, batch, 0.05)[1]["kl"])
    assert kl["relative"] > kl["absolute"], kl


def test_coerce_accepts_an_equal_config_class_from_a_reloaded_module():
    "A notebook that re-executes the exported cells defines its own SAPPOConfig; DistributionalPPO must still take it."
    import dataclasses
    Other = dataclasses.make_dataclass("SAPPOConfig", [(f.name, f.type, dataclasses.field(default=f.default))
                                                      for f in dataclasses.fields(SAPPOConfig)])
    cfg = SAPPOConfig.coerce(Other(eps=0.3, noise="absolute"))
    assert type(cfg) is SAPPOConfig and cfg.eps == 0.3 and cfg.noise == "absolute"
    with pytest.raises(TypeError, match="sappo must be"): SAPPOConfig.coerce(3.0)
