"""Env-steps/s of DistributionalPPO vs sb3-contrib RecurrentPPO and SB3 PPO("MlpPolicy"), one run, same settings.

    .venv/bin/python benchmarks/bench_ppo.py                 # both configurations (several minutes)
    .venv/bin/python benchmarks/bench_ppo.py --quick         # smoke run
    .venv/bin/python benchmarks/bench_ppo.py --config main   # only the main job's configuration

Two configurations are measured by default, each against its peers: `small` (window 1: 12 observation features,
batch 256, sequence length 64, 252-step episodes; or what the flags say) and `main`, the configuration of the main
job (`make run`: window 32, i.e. 291 features, n_envs 8, n_steps 256, batch 512, sequence length 32, 256-step
episodes, LSTM 64, 32 quantiles), which overrides the flags.

Every algorithm trains on the same `TradingVecEnv` (synthetic regime market) with the same n_envs, n_steps,
batch size, epochs and LSTM size, in its own subprocess (so peak RSS is per algorithm). Each measurement is
`learn(timesteps)` after a one-rollout warm-up; runs are interleaved and the median of `--repeats` runs is
reported, with ratios against the peers measured in the same run. Throughput is env steps per second of the
process's CPU time (one torch thread), which other processes on a shared machine disturb far less than wall
time; wall-time figures are printed too. Peak RSS of DistributionalPPO is also measured for growing n_steps to show
that rollout + update memory grows linearly in n_steps * n_envs.
"""
from __future__ import annotations
import json, resource, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _worker import recurrent_ppo_parser, run_worker

ALGOS = ("DistributionalPPO", "RecurrentPPO", "PPO-MLP")

def worker(a) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    from tradingrl_nb.data import synthetic_market
    from tradingrl_nb.vec_env import TradingVecEnv
    df = synthetic_market(3000, seed=0)
    env = TradingVecEnv(df, n_envs=a.n_envs, seed=0, window=a.window, episode_length=a.episode_length)
    common = dict(n_steps=a.n_steps, batch_size=a.batch_size, n_epochs=a.epochs, seed=0, device="cpu", verbose=0)
    if a.algo == "DistributionalPPO":
        from tradingrl_nb.ppo import DistributionalPPO
        model = DistributionalPPO("MlpLstmPolicy", env, sequence_length=a.seq_len,
                                  policy_kwargs=dict(lstm_hidden_size=a.lstm, n_quantiles=a.n_quantiles), **common)
    elif a.algo == "RecurrentPPO":
        from sb3_contrib import RecurrentPPO
        model = RecurrentPPO("MlpLstmPolicy", env, policy_kwargs=dict(lstm_hidden_size=a.lstm), **common)
    else:
        from stable_baselines3 import PPO
        model = PPO("MlpPolicy", env, **common)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.learn(a.n_steps * a.n_envs)                       # warm-up: one rollout + one update
    t, c = time.perf_counter(), time.process_time()
    model.learn(a.timesteps, reset_num_timesteps=False)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    n = model.num_timesteps - a.n_steps * a.n_envs
    return dict(steps_per_s=n / dc, steps_per_wall_s=n / dt, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                base_rss_mb=rss0 / 1024)

def run(algo: str, a, **over) -> dict:
    return run_worker(__file__, {**vars(a), "algo": algo, **over}, skip=("worker", "quick", "config", "no_memory"))

MAIN_JOB = dict(window=32, n_envs=8, n_steps=256, batch_size=512, seq_len=32, episode_length=256, lstm=64, n_quantiles=32)

def bench(a, name: str) -> None:
    "Interleaved runs of the three algorithms at one configuration; medians and ratios."
    print(f"\n=== configuration {name}: TradingVecEnv window={a.window} n_envs={a.n_envs} n_steps={a.n_steps} "
          f"batch_size={a.batch_size} n_epochs={a.epochs} sequence_length={a.seq_len} episode_length={a.episode_length} "
          f"lstm_hidden_size={a.lstm} n_quantiles={a.n_quantiles} timesteps={a.timesteps} repeats={a.repeats} "
          f"torch threads={a.threads}")
    res = {algo: [] for algo in ALGOS}
    for r in range(a.repeats):                                  # interleaved, so load changes hit all alike
        for algo in ALGOS:                                      # RecurrentPPO is slow: fewer timed steps (a rate is a rate)
            ts = a.timesteps if algo != "RecurrentPPO" else max(a.n_steps * a.n_envs, a.timesteps // 4)
            res[algo].append(run(algo, a, timesteps=ts))
    med = {k: statistics.median(x["steps_per_s"] for x in v) for k, v in res.items()}
    wall = {k: statistics.median(x["steps_per_wall_s"] for x in v) for k, v in res.items()}
    rss = {k: max(x["peak_rss_mb"] for x in v) for k, v in res.items()}
    print("env-steps per second of process CPU time (one torch thread; robust to other processes' load), and of wall time")
    print(f"{'algorithm':<20}{'CPU (median)':>14}{'runs':>34}{'wall (median)':>15}{'peak RSS MB':>13}")
    for k in ALGOS:
        runs = ", ".join(f"{x['steps_per_s']:.0f}" for x in res[k])
        print(f"{k:<20}{med[k]:>14.0f}{runs:>34}{wall[k]:>15.0f}{rss[k]:>13.0f}")
    r1, r2 = med["DistributionalPPO"] / med["RecurrentPPO"], med["DistributionalPPO"] / med["PPO-MLP"]
    w1, w2 = wall["DistributionalPPO"] / wall["RecurrentPPO"], wall["DistributionalPPO"] / wall["PPO-MLP"]
    print(f"[{name}] DistributionalPPO / RecurrentPPO = {r1:.1f}x   (wall: {w1:.1f}x)   goal >= 10x: {'met' if r1 >= 10 else 'NOT met'}")
    print(f"[{name}] DistributionalPPO / PPO-MLP      = {r2:.2f}x  (wall: {w2:.2f}x)  goal >= 0.5x: {'met' if r2 >= 0.5 else 'NOT met'}")

def main(argv=None):
    p = recurrent_ppo_parser(__doc__, "DistributionalPPO")
    p.add_argument("--timesteps", type=int, default=None,
                   help="timed env steps per run (default: 6 rollouts, quick: 2; RecurrentPPO a quarter, at least one rollout)")
    p.add_argument("--repeats", type=int, default=None, help="runs per algorithm (median; default 5, quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every algorithm")
    p.add_argument("--episode-length", type=int, default=252, help="TradingVecEnv episode_length (small configuration)")
    p.add_argument("--n-quantiles", type=int, default=32, help="DistributionalPPO quantiles per critic")
    p.add_argument("--config", choices=("both", "small", "main"), default="both",
                   help="small: the flags as given; main: the main job's configuration (overrides the flags)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS-vs-n_steps measurement")
    a = p.parse_args(argv)
    steps_given = a.timesteps is not None
    if a.repeats is None: a.repeats = 1 if a.quick else 5
    if a.worker:
        print(json.dumps(worker(a)))
        return
    import argparse
    for name in (("small", "main") if a.config == "both" else (a.config,)):
        c = argparse.Namespace(**{**vars(a), **(MAIN_JOB if name == "main" else {})})
        if not steps_given: c.timesteps = c.n_steps * c.n_envs * (2 if a.quick else 6)
        bench(c, name)
    if a.no_memory: return
    if not steps_given: a.timesteps = a.n_steps * a.n_envs * (2 if a.quick else 6)
    print("\nDistributionalPPO peak RSS vs rollout size (n_steps * n_envs):")
    pts = []
    for k in (1, 2, 4) if not a.quick else (1, 2):
        ns = a.n_steps * k
        x = run("DistributionalPPO", a, n_steps=ns, timesteps=ns * a.n_envs, batch_size=a.batch_size)
        pts.append((ns * a.n_envs, x["peak_rss_mb"]))
        print(f"  n_steps={ns:<6} transitions={ns * a.n_envs:<7} peak RSS {x['peak_rss_mb']:.0f} MB")
    (n0, m0), (n1, m1) = pts[0], pts[-1]
    print(f"  growth: {(m1 - m0) / (n1 - n0) * 1024:.2f} KB per transition")

if __name__ == "__main__":
    main()
