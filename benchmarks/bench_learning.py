"""Positive and null controls of learning: the library-default agent on planted-signal markets, beside its peers.

    .venv/bin/python benchmarks/bench_learning.py              # full size (about 20-30 minutes on 2 cores)
    .venv/bin/python benchmarks/bench_learning.py --quick      # smoke run (small steps, one seed)
    .venv/bin/python benchmarks/bench_learning.py --only null  # one part: positive, peers or null

Positive control (`tradingrl_nb.controls`): the library-default DistributionalPPO with the main job's env and network
(window 32, 8 envs, n_steps 256, batch 512, 4 epochs, sequence 32, LSTM 64, 32 quantiles) trains 131,072 steps on
a 4,000-day path of each planted market (regime, regime_slow, signal, signal_fast, signal_slow) and is tested on a held-out 6,000-day path,
for seeds 0-2. Beside it, in the same run: the same agent with `use_vgs=False`, SB3 PPO("MlpPolicy") at the same
budget, sb3-contrib RecurrentPPO at an eighth of it (16,384 steps: it runs about 25x slower per step), the agent with the seeds'
VGS factor (alpha 0.1 on the absolute noise measure, on the regime market: the run the health rule must flag),
buy-and-hold and the oracle (the generator's expected returns through the same env, costs and fills). A market passes when every seed's
calm-minus-crash gap (mean position where the edge is positive minus where it is negative) is >= 0.3, every mean
|position| >= 0.4, and the median test Sharpe >= 0.3x the oracle's (the aim: 0.5x).

Null control: the default agent on i.i.d. returns (10 seeds, each its own training and test path): the main job's
verdict (agent minus buy-and-hold Sharpe, stationary-bootstrap 95% interval) per test path and per one-year window,
and how often it reads "skill".

Sweep (`--sweep gamma=0.99,0.7 --sweep-seeds 6`): the default agent with one argument changed, on the same markets and
seeds, to `results/controls/sweep.csv` (how the default discount was chosen: nbs/09a_controls.ipynb).

Each run is one process (one torch thread), two at a time. Tables go to stdout and to results/controls/ (CSV), which
nbs/09a_controls.ipynb reads and shows.
"""
from __future__ import annotations
import argparse, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "controls"
MARKETS = ("regime", "regime_slow", "signal", "signal_fast", "signal_slow")


def _worker_setup(quick: bool) -> dict:
    "One torch thread per worker process, no UserWarning noise; the small model of a --quick run (else the controls' own)."
    import torch, warnings
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    return dict(n_steps=64, batch_size=128, n_epochs=1, policy_kwargs=dict(lstm_hidden_size=16, n_quantiles=8)) if quick else {}


def _job(kind: str, market: str, seed: int, steps: int, quick: bool, overrides: dict | None = None) -> dict:
    small = _worker_setup(quick)
    from tradingrl_nb import controls
    if kind == "default": row = controls.train_and_test(market, seed, "default", steps, **small)
    elif kind == "sweep":
        label = ",".join(f"{k}={v}" for k, v in overrides.items())
        row = {**controls.train_and_test(market, seed, "default", steps, **{**small, **overrides}), "agent": label}
    elif kind == "no_vgs": row = {**controls.train_and_test(market, seed, "default", steps, use_vgs=False, **small), "agent": "use_vgs=False"}
    elif kind == "seeds_vgs":                      # the factor before the recalibration: the health rule must flag it
        row = {**controls.train_and_test(market, seed, "default", steps, vgs_kwargs=dict(reference="absolute", alpha=0.1, min_factor=1e-4),
                                         **small), "agent": "seeds' VGS"}
    else: row = controls.train_and_test(market, seed, kind, steps)
    return row


def _null_job(seed: int, steps: int, quick: bool) -> tuple[list, list]:
    small = _worker_setup(quick)
    from tradingrl_nb import controls
    per_seed, per_year = controls.null_control([seed], steps, days=1200 if quick else 6000, reps=200 if quick else 1000, **small)
    return per_seed.to_dict("records"), per_year.to_dict("records")


def _store(table, name: str) -> None:
    "Merge `table` into results/controls/NAME (a partial run replaces its own (market, agent, seed) rows, keeps the rest)."
    import pandas as pd
    OUT.mkdir(parents=True, exist_ok=True)
    f = OUT / name
    if f.exists():
        old = pd.read_csv(f)
        key = lambda d: d["market"] + "|" + d["agent"] + "|" + d["seed"].astype(str)
        table = pd.concat([old[~key(old).isin(set(key(table)))], table], ignore_index=True)
    table.to_csv(f, index=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 4,096 steps, seed 0, a small network, no files written")
    p.add_argument("--only", choices=["positive", "peers", "null"], action="append", help="run only these parts (repeatable)")
    p.add_argument("--jobs", type=int, default=2, help="processes at once (default 2)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the positive control (default 3)")
    p.add_argument("--null-seeds", type=int, default=10, help="seeds of the null control (default 10)")
    p.add_argument("--sweep", action="append", default=[], metavar="ARG=V1,V2",
                   help="the default agent with one argument at each value (repeatable; floats); writes sweep.csv")
    p.add_argument("--sweep-seeds", type=int, default=6, help="seeds of a sweep (default 6: the control's 3 and 3 held out)")
    p.add_argument("--markets", nargs="+", choices=MARKETS, default=list(MARKETS), help="planted markets (default: all)")
    a = p.parse_args(argv)
    import pandas as pd
    from tradingrl_nb import controls
    parts = set(a.only or (["sweep"] if a.sweep else ["positive", "peers", "null"]))
    steps = 4096 if a.quick else controls.CONTROL_STEPS
    seeds = [0] if a.quick else list(range(a.seeds))
    jobs = []
    if "positive" in parts:
        jobs += [(k, m, s, steps) for k in ("default", "no_vgs") for m in a.markets for s in seeds]
        jobs += [("seeds_vgs", "regime", s, steps) for s in seeds]
    if "peers" in parts:
        jobs += [("PPO", m, s, steps) for m in a.markets for s in seeds]
        jobs += [("RecurrentPPO", m, s, max(2048, steps // 8)) for m in a.markets for s in seeds]
    sweep = []
    for spec in a.sweep:
        name, _, values = spec.partition("=")
        if not name or not values: p.error(f"--sweep {spec!r}: use ARG=V1,V2")
        sweep += [{name: float(v)} for v in values.split(",")]
    if sweep: jobs += [("sweep", m, s, steps, o) for o in sweep for m in a.markets for s in ([0] if a.quick else range(a.sweep_seeds))]
    null_seeds = [0] if a.quick else list(range(a.null_seeds))
    t0 = time.perf_counter()
    rows, null_rows, year_rows = [], [], []
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        futs = [ex.submit(_job, *job[:4], a.quick, *job[4:]) for job in jobs]
        nfuts = [ex.submit(_null_job, s, steps, a.quick) for s in null_seeds] if "null" in parts else []
        for i, f in enumerate(futs):
            r = f.result()
            rows.append(r)
            print(f"[{time.perf_counter() - t0:5.0f}s] {r['agent']:>14} {r['market']:>11} seed {r['seed']}: Sharpe {r['sharpe']:+.2f} "
                  f"({r['sharpe_fraction']:+.2f}x oracle), gap {r['gap']:+.2f}, |pos| {r['abs_position']:.2f}", flush=True)
        for f in nfuts:
            ps, py = f.result()
            null_rows += ps
            year_rows += py
            print(f"[{time.perf_counter() - t0:5.0f}s] null seed {ps[0]['seed']}: agent - buy-and-hold {ps[0]['diff']:+.2f} "
                  f"[{ps[0]['low']:+.2f}, {ps[0]['high']:+.2f}] {ps[0]['verdict']}", flush=True)
    pd.set_option("display.width", 200)
    if rows and "sweep" in parts:
        table = pd.DataFrame([r for r in rows if "=" in r["agent"]])
        if len(table):
            by = table.groupby(["agent", "market"])
            summary = pd.DataFrame({"median_fraction": by["sharpe_fraction"].median(), "min_gap": by["gap"].min(),
                                    "min_abs_position": by["abs_position"].min(), "seeds": by["seed"].count()})
            print("\n== sweep: median Sharpe fraction of the oracle's, smallest gap and |position| over the seeds")
            print(summary.round(3).to_string())
            if not a.quick: _store(table, "sweep.csv")
        rows = [r for r in rows if "=" not in r["agent"]]
    if rows:
        table = pd.DataFrame(rows)
        cols = ["market", "agent", "seed", "steps", "sharpe", "oracle_sharpe", "bh_sharpe", "sharpe_fraction", "gap", "oracle_gap",
                "abs_position", "health_actor_update_ratio", "health_vgs_k_mean", "health_moved"]
        print("\n== positive control, per seed (test path: 6,000 days; Sharpe annualized)")
        print(table[[c for c in cols if c in table]].round(3).to_string(index=False))
        verdict = controls.positive_control_verdict(table)
        print("\n== per market and agent (passed: every seed's gap >= 0.3 and |position| >= 0.4, median fraction >= 0.3)")
        print(verdict.round(3).to_string())
        if not a.quick: _store(table, "positive.csv")
    if null_rows:
        ns, ny = pd.DataFrame(null_rows), pd.DataFrame(year_rows)
        print("\n== null control (i.i.d. returns): agent minus buy-and-hold Sharpe, 95% interval, per seed's 6,000-day test path")
        print(ns[["seed", "sharpe", "bh_sharpe", "diff", "low", "high", "verdict", "abs_position", "health_moved"]].round(3).to_string(index=False))
        rate = (ny["verdict"] == "skill").mean()
        print(f"\n'skill' in {int((ns['verdict'] == 'skill').sum())} of {len(ns)} whole paths and in {int((ny['verdict'] == 'skill').sum())} of "
              f"{len(ny)} one-year windows ({rate:.1%}; a one-sided 2.5% test would give about 2.5%); 'no skill' in "
              f"{(ny['verdict'] == 'no skill').mean():.1%} of the windows")
        if not a.quick:
            OUT.mkdir(parents=True, exist_ok=True)
            ns.to_csv(OUT / "null.csv", index=False)
            ny.to_csv(OUT / "null_years.csv", index=False)
    print(f"\nwall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
