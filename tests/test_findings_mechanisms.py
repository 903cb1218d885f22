"""The mechanism experiments (issue 15) run for real with their tiny defaults and record well-formed findings:
`return_snapshot_timing` -> `return_snapshot_value_bias`, `lstm_reset_after_exploit` -> `lstm_reset_value_loss_spike` and
`lstm_reset_convergence`."""
import json

import numpy as np
import pytest

from tradingrl_nb import experiments as ex
from tradingrl_nb import fileio

CASES = {"return_snapshot_timing": ["return_snapshot_value_bias"],
         "lstm_reset_after_exploit": ["lstm_reset_value_loss_spike", "lstm_reset_convergence"]}


def expected_verdict(f) -> str:
    "The verdict the interval implies against the claim's size (tradingrl_nb.findings.verdict_of)."
    from tradingrl_nb.findings import verdict_of
    return verdict_of(f)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mechanism_experiment_records_its_finding(name, tmp_path):
    specs = ex.experiment_parameters(name)
    seeds = specs["seeds"].default
    r = ex.run_experiment(name, output_dir=tmp_path / name, device="cpu", progress=False, report=False)
    assert r.ok, r.error
    assert json.loads((r.output_dir / "metrics.json").read_text()) == fileio.to_jsonable(r.metrics)
    assert list((r.output_dir / "figures").glob("*.png"))
    fs = r.metrics["findings"]
    assert [f["id"] for f in fs] == CASES[name]
    f = fs[0]
    assert f["n_seeds"] == len(f["per_seed"]) == len(seeds) >= 2
    assert f["steps_per_run"] == specs["total_timesteps"].default
    assert np.all(np.isfinite(f["per_seed"]))
    lo, hi = f["ci95"]
    assert lo <= f["estimate"] <= hi
    assert f["estimate"] == pytest.approx(np.mean(f["per_seed"]))
    assert (f["null"], f["direction"]) == (0.0, "higher")
    assert f["verdict"] == expected_verdict(f)
    assert f["metric"] and f["detail"]
    for g in fs[1:]:                                 # the convergence reframing: a ratio per seed, with / without the reset
        assert g["n_seeds"] == len(seeds) and (g["null"], g["direction"]) == (1.0, "lower")
        assert np.all(np.array(g["per_seed"]) > 0) and g["ci95"][0] <= g["estimate"] <= g["ci95"][1]
        assert g["estimate"] == pytest.approx(np.exp(np.mean(np.log(g["per_seed"]))))
        assert g["verdict"] == expected_verdict(g)
