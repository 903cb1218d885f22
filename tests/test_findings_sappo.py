"""The robustness_sappo experiment, run tiny through the runner, yields the finding `sappo_attacked_sharpe` (issue 15)."""
import json

import numpy as np
import pytest

from tradingrl_nb import experiments as ex
from tradingrl_nb.claims import CLAIMS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness_sappo")
    r = ex.run_experiment("robustness_sappo", output_dir=out / "run", device="cpu", progress=False, report=False)
    assert r.ok, r.error
    return r


def _finding(r):
    fs = [f for f in r.metrics["findings"] if f["id"] == "sappo_attacked_sharpe"]
    assert len(fs) == 1, r.metrics["findings"]
    return fs[0]


def test_finding_id_seeds_and_verdict(run):
    f = _finding(run)
    params = json.loads((run.output_dir / "params.json").read_text())
    seeds = params["seeds"]
    assert len(f["per_seed"]) == f["n_seeds"] == len(seeds) >= 2
    assert all(np.isfinite(f["per_seed"]))
    lo, hi = f["ci95"]
    assert lo <= f["estimate"] <= hi
    assert (f["null"], f["direction"]) == (CLAIMS["sappo_attacked_sharpe"].null, "higher") and f["null"] == 0
    from tradingrl_nb.findings import verdict_of
    assert f["verdict"] == verdict_of(f)
    assert f["steps_per_run"] == params["total_timesteps"]


def test_worst_case_is_the_minimum_over_attacks(run):
    "The finding's per-seed values are SA-PPO minus PPO of each seed's lowest Sharpe over the attacks at sappo_eps."
    m, f = run.metrics, _finding(run)
    eps = m["setup"]["sappo_eps"]
    rows = [r for r in m["per_seed"] if r["eps"] == eps]
    by = {(r["agent"], r["seed"]): r for r in rows}
    assert {r["method"] for r in rows} <= set(m["setup"]["attack_methods"])
    diff = [by[("sappo", s)]["sharpe"] - by[("ppo", s)]["sharpe"] for s in m["setup"]["seeds"]]
    assert np.allclose(diff, f["per_seed"])
    # the median agent's attacked Sharpe in the detail is the median of those rows
    assert f"{np.median([by[('ppo', s)]['sharpe'] for s in m['setup']['seeds']]):+.2f}" in f["detail"]
    assert all(r["mean_kl"] > 0 for r in rows) and "clean" in f["detail"]
