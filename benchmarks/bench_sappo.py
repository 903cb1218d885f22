"""Time per update of SA-PPO (`SAPPO`, robust KL regularizer with a 10-step SGLD attack) against plain
`DistributionalPPO`, same env and settings, measured in the same run.

    .venv/bin/python benchmarks/bench_sappo.py            # full (a few minutes)
    .venv/bin/python benchmarks/bench_sappo.py --quick    # smoke run

An *update* is what the epsilon ramp counts: one rollout of `n_steps` x `n_envs` steps and its `n_epochs` of
minibatch updates. Two ratios are printed: per update (rollout + training, what a run costs) and per training
phase alone (`train()`, where all of the extra work is). The attack runs at full radius from the first update
(`ramp_fraction=0`); with the default ramp the early updates have eps ~ 0 and cost less. Each algorithm runs in
its own subprocess, interleaved over `--repeats` runs; medians are reported (the machine is shared). Times are the
process's CPU time (one torch thread), which other processes on a shared machine disturb far less than wall time;
the wall time per update is printed too.
"""
from __future__ import annotations
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _worker import recurrent_ppo_parser, run_worker

ALGOS = ("DistributionalPPO", "SAPPO")

def worker(a) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    from tradingrl_nb.data import synthetic_market
    from tradingrl_nb.vec_env import TradingVecEnv
    from tradingrl_nb.ppo import DistributionalPPO
    from tradingrl_nb.sappo import SAPPO
    env = TradingVecEnv(synthetic_market(3000, seed=0), n_envs=a.n_envs, seed=0, window=a.window, episode_length=252)
    common = dict(n_steps=a.n_steps, batch_size=a.batch_size, n_epochs=a.epochs, sequence_length=a.seq_len, seed=0,
                  device="cpu", verbose=0, policy_kwargs=dict(lstm_hidden_size=a.lstm))
    if a.algo == "SAPPO":
        cfg = dict(eps=a.eps, steps=a.attack_steps, method=a.method, noise=a.noise, ramp_fraction=0.0)
        model = SAPPO("MlpLstmPolicy", env, sappo=cfg, **common)
    else:
        model = DistributionalPPO("MlpLstmPolicy", env, **common)
    per = a.n_steps * a.n_envs
    model.learn(per)                                                  # warm-up: one rollout + one training phase
    train_times: list[float] = []
    train = model.train
    def timed_train():
        t = time.process_time()
        train()
        train_times.append(time.process_time() - t)
    model.train = timed_train
    t, w = time.process_time(), time.perf_counter()
    model.learn(a.updates * per, reset_num_timesteps=False)
    dt, wall = time.process_time() - t, time.perf_counter() - w
    if a.algo == "SAPPO": assert model.sappo_eps == a.eps
    return dict(update_s=dt / a.updates, train_s=statistics.median(train_times), wall_update_s=wall / a.updates)

def run(algo: str, a) -> dict:
    return run_worker(__file__, dict(vars(a), algo=algo))

def main(argv=None):
    p = recurrent_ppo_parser(__doc__, "SAPPO")
    p.add_argument("--eps", type=float, default=0.05, help="attack radius")
    p.add_argument("--attack-steps", type=int, default=10, help="inner attack steps (SAPPOConfig.steps)")
    p.add_argument("--method", default="sgld", choices=("sgld", "pgd"))
    p.add_argument("--noise", default="relative", choices=("relative", "absolute"),
                   help="SGLD noise: scaled to each state's gradient (default) or the reference's absolute noise")
    p.add_argument("--updates", type=int, default=None, help="timed updates per run (default 6, quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="runs per algorithm (median; default 5, quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both")
    a = p.parse_args(argv)
    if a.updates is None: a.updates = 2 if a.quick else 6
    if a.repeats is None: a.repeats = 1 if a.quick else 5
    if a.quick: a.n_steps, a.epochs = min(a.n_steps, 128), min(a.epochs, 2)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    print(f"TradingVecEnv n_envs={a.n_envs} window={a.window} n_steps={a.n_steps} batch_size={a.batch_size} "
          f"n_epochs={a.epochs} lstm={a.lstm} sequence_length={a.seq_len}; SA-PPO {a.method} steps={a.attack_steps} "
          f"eps={a.eps} noise={a.noise}; {a.updates} timed updates x {a.repeats} repeats; torch threads={a.threads}")
    res = {algo: [] for algo in ALGOS}
    for _ in range(a.repeats):                                       # interleaved, so load changes hit both alike
        for algo in ALGOS: res[algo].append(run(algo, a))
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("update_s", "train_s")} for k, v in res.items()}
    print(f"\n{'algorithm':<20}{'CPU s / update':>16}{'CPU s / training phase':>24}{'wall s / update':>17}   runs (CPU s / update)")
    for k in ALGOS:
        print(f"{k:<20}{med[k]['update_s']:>16.3f}{med[k]['train_s']:>24.3f}"
              f"{statistics.median(x['wall_update_s'] for x in res[k]):>17.3f}   " + ", ".join(f"{x['update_s']:.3f}" for x in res[k]))
    r_up = med["SAPPO"]["update_s"] / med["DistributionalPPO"]["update_s"]
    r_tr = med["SAPPO"]["train_s"] / med["DistributionalPPO"]["train_s"]
    paired = lambda m: [s[m] / p[m] for s, p in zip(res["SAPPO"], res["DistributionalPPO"])]
    pu, pt = paired("update_s"), paired("train_s")
    print(f"\nSA-PPO / PPO time per update (rollout + training): {r_up:.2f}x  (goal <= 3x with 10 attack steps: "
          f"{'met' if r_up <= 3 else 'NOT met'})")
    print(f"SA-PPO / PPO time per training phase alone:        {r_tr:.2f}x")
    print(f"paired ratios (runs next to each other), per update: {', '.join(f'{r:.2f}' for r in pu)} "
          f"(median {statistics.median(pu):.2f}); per training phase: {', '.join(f'{r:.2f}' for r in pt)} "
          f"(median {statistics.median(pt):.2f})")

if __name__ == "__main__":
    main()
