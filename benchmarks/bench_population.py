"""K DistributionalPPO members trained as one Population in one process, against K separate runs.

At the main job's configuration (walk_forward's full preset: 8 envs, 256-step rollouts, 512-step minibatches, 4 epochs,
sequences of 32, a 32-day window, LSTM 64, 32 quantiles; S&P 500 up to 2007):

1. env steps/s for K = 1, 2, 5, 10, 20 members in one process (one torch thread), per member and in total, and the
   total as a fraction of the bound of 16.6k env steps/s per core (4.8 MFLOP an env step at 80 GFLOPS);
2. K = 1 against one DistributionalPPO in the same process;
3. K = 5 members in one fresh process against 5 separate runs, each a fresh process with one torch thread, two at a
   time on the same 2 cores, equal total steps, wall-clock from launch to the last result (imports, data and model
   set-up included); the population with one and with two torch threads; and the 5 runs one after another in one
   process (training alone);
4. the main job's work on the same 2 cores: two walk-forward windows (2008, 2018) with 5 seeds each, as 10
   `train_agent` notebook runs through the runner, two at a time (what `walk_forward` did before populations),
   against two `walkforward.train_window` processes side by side, one per window (what it does now): validation,
   early stopping, test backtests and files included.

The last line reads `K=5 vs 5 runs: <ratio>x` (3., the population's better thread count). `--quick` finishes within
10 minutes on 2 cores."""
import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

BOUND_PER_CORE = 16_600          # env steps/s per core at this configuration (the estimate)
CONFIG = dict(n_envs=8, n_steps=256, batch_size=512, n_epochs=4, sequence_length=32, window=32, lstm=64, quantiles=32)


def make_member(seed: int):
    from tradingrl_nb.data import load_market_data
    from tradingrl_nb.vec_env import TradingVecEnv
    from tradingrl_nb.ppo import DistributionalPPO
    df = load_market_data("sp500")
    env = TradingVecEnv(df, n_envs=CONFIG["n_envs"], seed=seed, end="2007-12-31", episode_length=256, window=CONFIG["window"])
    return DistributionalPPO("MlpLstmPolicy", env, n_steps=CONFIG["n_steps"], batch_size=CONFIG["batch_size"],
                             n_epochs=CONFIG["n_epochs"], sequence_length=CONFIG["sequence_length"], seed=seed, device="cpu",
                             policy_kwargs=dict(lstm_hidden_size=CONFIG["lstm"], n_quantiles=CONFIG["quantiles"]))


def worker(kind: str, k: int, steps: int, threads: int) -> dict:
    "One fresh process: `single` trains one model (seed k), `population` trains K = k members."
    import torch
    torch.set_num_threads(threads)
    t = time.perf_counter()
    if kind == "single":
        make_member(k).learn(steps)
    else:
        from tradingrl_nb.population import Population
        Population.build(make_member, range(k)).learn(steps)
    return dict(train_and_setup_s=time.perf_counter() - t)


def spawn(kind: str, k: int, steps: int, threads: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--worker", kind, str(k), str(steps), str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen) -> dict:
    out, err = p.communicate()
    if p.returncode: raise RuntimeError(f"worker failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def separate_runs(n: int, steps: int, parallel: int = 2) -> float:
    "Wall seconds for `n` fresh single-run processes, `parallel` at a time."
    t = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool: list(pool.map(lambda s: finish(spawn("single", s, steps, 1)), range(n)))
    return time.perf_counter() - t


def one_population(k: int, steps: int, threads: int = 2) -> float:
    t = time.perf_counter()
    finish(spawn("population", k, steps, threads))
    return time.perf_counter() - t


WINDOWS = {2008: dict(train_start="2003-01-01", train_end="2006-12-31", val_start="2007-01-01", val_end="2007-12-31",
                     test_start="2008-01-01", test_end="2008-12-31"),
           2018: dict(train_start="2013-01-01", train_end="2016-12-31", val_start="2017-01-01", val_end="2017-12-31",
                      test_start="2018-01-01", test_end="2018-12-31")}


def windows_old(steps: int, out: str) -> float:
    "Wall seconds of 10 train_agent runs (2 windows x 5 seeds) through the runner, two at a time, as walk_forward ran them."
    from concurrent.futures import ProcessPoolExecutor
    import functools, multiprocessing as mp
    from tradingrl_nb.experiments import run_experiment
    params = dict(total_timesteps=steps, eval_every=steps // 4, patience=3, n_envs=CONFIG["n_envs"], n_steps=CONFIG["n_steps"],
                  batch_size=CONFIG["batch_size"], n_epochs=CONFIG["n_epochs"], sequence_length=CONFIG["sequence_length"],
                  episode_length=256, window=CONFIG["window"], lstm_hidden_size=CONFIG["lstm"], n_quantiles=CONFIG["quantiles"],
                  bootstrap_reps=1000, baselines=[], threads=1)
    run = functools.partial(run_experiment, "train_agent", device="cpu", progress=False, report=False, raise_on_failure=True,
                            kernel_log=True)
    t = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        futures = [ex.submit(run, dict(params, seed=k, **span), output_dir=f"{out}/old-{y}-{k}")
                   for y, span in WINDOWS.items() for k in range(5)]
        for f in futures: f.result()
    return time.perf_counter() - t


def windows_new(steps: int, out: str) -> float:
    "Wall seconds of train_window for the same 2 windows x 5 seeds: one fresh process per window, both at once."
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--window", str(y), str(steps), out], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for y in WINDOWS]
    for p in procs: finish(p)
    return time.perf_counter() - t


def window_worker(year: int, steps: int, out: str) -> dict:
    import torch
    from tradingrl_nb.data import load_market_data
    from tradingrl_nb.walkforward import agent_kwargs, train_window
    torch.set_num_threads(1)
    kw = agent_kwargs(n_steps=CONFIG["n_steps"], batch_size=CONFIG["batch_size"], n_epochs=CONFIG["n_epochs"],
                      sequence_length=CONFIG["sequence_length"], lstm_hidden_size=CONFIG["lstm"], n_quantiles=CONFIG["quantiles"])
    runs = train_window(load_market_data("sp500"), WINDOWS[year], range(5), total_timesteps=steps, eval_every=steps // 4,
                        patience=3, n_envs=CONFIG["n_envs"], episode_length=256, env_kwargs=dict(window=CONFIG["window"]),
                        ppo_kwargs=kw, bootstrap_reps=1000, output_dirs={k: f"{out}/new-{year}-{k}" for k in range(5)})
    return dict(steps=[r.metrics["training"]["timesteps"] for r in runs.values()])


def throughput(ks, iters: int) -> list[dict]:
    "Env steps/s in this process (one thread) for one model and for populations of each size in `ks`."
    import torch
    from tradingrl_nb.population import Population
    torch.set_num_threads(1)
    per_iter = CONFIG["n_envs"] * CONFIG["n_steps"]
    m = make_member(0)
    m.learn(per_iter)                                            # warm-up: first rollout and update
    t = time.perf_counter()
    m.learn(iters * per_iter, reset_num_timesteps=False)
    single = iters * per_iter / (time.perf_counter() - t)
    rows = [dict(K="single model", total=single, per_member=single, bound_fraction=single / BOUND_PER_CORE, vs_single=1.0)]
    for k in ks:
        pop = Population.build(make_member, range(k))
        pop.learn(per_iter)
        t = time.perf_counter()
        pop.learn(iters * per_iter, reset_num_timesteps=False)
        total = k * iters * per_iter / (time.perf_counter() - t)
        rows.append(dict(K=k, total=total, per_member=total / k, bound_fraction=total / BOUND_PER_CORE, vs_single=total / single))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps (within 10 minutes on 2 cores)")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--window", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--ks", default="1,2,5,10,20", help="population sizes of the throughput table")
    a = p.parse_args()
    if a.worker:
        kind, k, steps, threads = a.worker
        print(json.dumps(worker(kind, int(k), int(steps), int(threads))))
        return
    if a.window:
        print(json.dumps(window_worker(int(a.window[0]), int(a.window[1]), a.window[2])))
        return
    iters = 2 if a.quick else 6
    per_run = 8 * 2048 if a.quick else 40 * 2048                  # env steps per member in the K=5 comparison
    print(f"configuration: {CONFIG}; torch threads: 1 in the table, 2 for the population against 2 runs at a time")
    rows = throughput([int(x) for x in a.ks.split(",")], iters)
    print(f"\nenv steps/s in one process, one thread ({iters} iterations of {CONFIG['n_envs'] * CONFIG['n_steps']} steps per member):")
    print(f"{'K':>13} {'total':>9} {'per member':>11} {'of bound':>9} {'vs single':>10}")
    for r in rows:
        print(f"{r['K']!s:>13} {r['total']:>9.0f} {r['per_member']:>11.0f} {r['bound_fraction']:>9.1%} {r['vs_single']:>9.2f}x")
    k1 = next(r for r in rows if r["K"] == 1)
    print(f"K=1 vs DistributionalPPO: {k1['vs_single']:.2f}x")
    sep = separate_runs(5, per_run)
    pops = {n: one_population(5, per_run, n) for n in (1, 2)}
    t = time.perf_counter()
    for seed in range(5): worker("single", seed, per_run, 1)
    seq_s = time.perf_counter() - t
    print(f"\n5 x {per_run} env steps: 5 separate processes, 2 at a time: {sep:.1f} s; one population process: "
          f"{pops[1]:.1f} s with 1 thread, {pops[2]:.1f} s with 2; the 5 runs one after another in this warm process "
          f"(no start-up): {seq_s:.1f} s")
    print(f"population process (1 thread, start-up included) vs the same runs one after another in a warm process: "
          f"{seq_s / pops[1]:.2f}x")
    import tempfile
    out = tempfile.mkdtemp(prefix="bench_population-")
    w_steps = 4 * 2048 if a.quick else 24 * 2048
    old, new = windows_old(w_steps, out), windows_new(w_steps, out)
    print(f"\ntwo walk-forward windows x 5 seeds, at most {w_steps} steps each (validation every {w_steps // 4}), 2 cores: "
          f"10 train_agent runs, 2 at a time: {old:.1f} s; 2 train_window processes side by side: {new:.1f} s -> {old / new:.2f}x")
    print(f"K=5 vs 5 runs: {sep / min(pops.values()):.2f}x")


if __name__ == "__main__":
    main()
