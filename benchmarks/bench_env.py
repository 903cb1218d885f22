"""Env-steps per second of `TradingVecEnv` against a `DummyVecEnv` of `TradingEnv`s (and gym-anytrading's
`stocks-v0` in a `DummyVecEnv`, if gym-anytrading is installed), at 64 and 1,024 envs, window 32.

    .venv/bin/python benchmarks/bench_env.py            # full run, 5 repeats, median
    .venv/bin/python benchmarks/bench_env.py --quick    # about half a minute

Every contender steps the S&P 500 training span (1999-2012) with random actions, auto-resets included
(`TradingEnv`s: random starts, 256-step episodes; gym-anytrading: its whole-span episodes). Absolute numbers
are noise on a shared machine: read the ratios, measured in the same run. Goals (issue 5): `TradingVecEnv`
>= 1M env-steps/s at 1,024 envs, and >= 10x a `DummyVecEnv` of `TradingEnv`s at 64 envs.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np

from stable_baselines3.common.vec_env import DummyVecEnv
from tradingrl_nb.data import load_market_data, split_by_date
from tradingrl_nb.env import TradingEnv
from tradingrl_nb.vec_env import TradingVecEnv


def steps_per_second(make_venv, n_envs: int, env_steps: int, repeats: int, discrete: bool = False) -> list[float]:
    "Env-steps/s of `repeats` timed runs, each of about `env_steps` env-steps after a short warm-up."
    venv = make_venv(n_envs)
    n_steps = max(5, env_steps // n_envs)
    rng = np.random.default_rng(0)
    if discrete:
        acts = rng.integers(0, 2, size=(n_steps, n_envs))
    else:
        acts = rng.uniform(-1, 1, size=(n_steps, n_envs, 1)).astype(np.float32)
    venv.seed(0)
    venv.reset()
    for a in acts[:3]:
        venv.step(a)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for a in acts:
            venv.step(a)
        out.append(n_steps * n_envs / (time.perf_counter() - t))
    venv.close()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per contender (default 5, quick 3)")
    p.add_argument("--envs", type=int, nargs="+", default=[64, 1024], help="numbers of envs")
    p.add_argument("--window", type=int, default=32)
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    fast_steps, slow_steps = (100_000, 4_000) if args.quick else (400_000, 16_000)

    df = split_by_date(load_market_data("sp500")).train
    kw = dict(window=args.window, episode_length=256)
    market = TradingEnv(df, **kw).market  # the DummyVecEnv's TradingEnvs share one copy of the market arrays
    contenders = {
        "TradingVecEnv": (lambda n: TradingVecEnv(df, n, **kw), fast_steps, False),
        "TradingVecEnv(full_info)": (lambda n: TradingVecEnv(df, n, full_info=True, **kw), fast_steps // 2, False),
        "DummyVecEnv[TradingEnv]": (lambda n: DummyVecEnv([lambda: TradingEnv(df, market=market, **kw) for _ in range(n)]), slow_steps, False),
    }
    try:
        import gymnasium as gym  # noqa: F401  (the peer needs it installed)
        import gym_anytrading  # noqa: F401  (registers stocks-v0)
        from gym_anytrading.envs import StocksEnv
        peer_df = df.rename(columns=str.capitalize)  # it reads 'Close'
        def make_peer(n):
            return DummyVecEnv([lambda: StocksEnv(df=peer_df, window_size=args.window, frame_bound=(args.window, len(peer_df)))
                                for _ in range(n)])
        contenders["DummyVecEnv[gym-anytrading]"] = (make_peer, slow_steps, True)
        from importlib.metadata import version
        peer_note = f"gym-anytrading {version('gym-anytrading')} installed: measured as the peer"
    except ImportError:
        peer_note = "gym-anytrading not installed: peer skipped (pip install gym-anytrading to include it)"

    print(f"bench_env: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"window {args.window}, {repeats} repeats (median){' --quick' if args.quick else ''}")
    print(peer_note)
    res: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in args.envs:
            for name, (make, steps, discrete) in contenders.items():
                runs = steps_per_second(make, n, steps, repeats, discrete)
                res[(name, n)] = statistics.median(runs)
    print(f"\n{'contender':30s} {'n_envs':>6s} {'env-steps/s':>13s} {'vs Dummy[TradingEnv]':>21s} {'vs gym-anytrading':>18s}")
    for n in args.envs:
        base = res[("DummyVecEnv[TradingEnv]", n)]
        peer = res.get(("DummyVecEnv[gym-anytrading]", n))
        for name in contenders:
            v = res[(name, n)]
            peer_ratio = f"{v / peer:17.1f}x" if peer else f"{'-':>18s}"
            print(f"{name:30s} {n:6d} {v:13,.0f} {v / base:20.1f}x {peer_ratio}")
    print("\ngoals:")
    if 1024 in args.envs:
        v = res[("TradingVecEnv", 1024)]
        print(f"  TradingVecEnv >= 1M env-steps/s at 1024 envs: {v:,.0f} -> {'met' if v >= 1e6 else 'NOT met'}")
    if 64 in args.envs:
        r = res[("TradingVecEnv", 64)] / res[("DummyVecEnv[TradingEnv]", 64)]
        print(f"  TradingVecEnv >= 10x DummyVecEnv[TradingEnv] at 64 envs: {r:.1f}x -> {'met' if r >= 10 else 'NOT met'}")
    return res


if __name__ == "__main__":
    main()
