"""Findings of the VGS x UPGD-noise ablation and of the critic variance-scaling experiment (issue 15).

Each experiment notebook runs for real with its tiny defaults; its metrics.json must hold the findings with the
right ids, one value per seed, and verdicts that follow from the intervals. The fixed-noise calibration of the
ablation rests on the noise-to-signal ratio of fixed UPGD noise being linear in sigma: tested on the optimizer."""
import json

import nbformat
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tradingrl_nb import experiments as ex
from tradingrl_nb import fileio
from tradingrl_nb.adaptive_upgd import AdaptiveUPGD

ABLATION_IDS = ["fixed_noise_nsr_under_vgs", "adaptive_noise_value_loss_variance", "adaptive_noise_sample_efficiency",
                "vgs_effect_value_loss_variance"]
CRITIC_IDS = ["variance_scaling_value_loss_std", "variance_scaling_sharpe"]


def expected_verdict(f: dict) -> str:
    "The verdict the contract prescribes for a finding's interval against its claim's size (tradingrl_nb.findings)."
    from tradingrl_nb.findings import verdict_of
    return verdict_of(f)


def check_findings(path, ids, n_seeds, steps):
    stored = fileio.from_jsonable(json.loads(path.read_text()))
    fs = stored["findings"]
    assert [f["id"] for f in fs] == ids
    for f in fs:
        assert f["n_seeds"] == n_seeds and len(f["per_seed"]) == n_seeds, f["id"]
        assert f["steps_per_run"] == steps, f["id"]
        assert all(np.isfinite(f["per_seed"])), f["id"]
        lo, hi = f["ci95"]
        assert lo <= f["estimate"] <= hi, f["id"]
        assert f["direction"] in ("higher", "lower") and f["verdict"] == expected_verdict(f), f["id"]
        assert f["metric"] and f["detail"], f["id"]
    return stored


def run_findings(tmp_path, name: str, ids: list[str]):
    "Run experiment `name` with its tiny defaults; its result, parameters and checked metrics."
    r = ex.run_experiment(name, output_dir=tmp_path / name, device="cpu", progress=False, report=False)
    assert r.ok, r.error
    p = json.loads((r.output_dir / "params.json").read_text())
    return r, p, check_findings(r.output_dir / "metrics.json", ids, len(p["seeds"]), p["total_timesteps"])


@pytest.mark.slow
def test_ablation_findings(tmp_path):
    r, p, m = run_findings(tmp_path, "ablation_vgs_upgd", ABLATION_IDS)
    f = {x["id"]: x for x in m["findings"]}
    # ratios of positive measures: geometric means, so the estimate is the exp of the mean log of the per-seed values
    for x in f.values():
        assert x["null"] == 1 and x["estimate"] == pytest.approx(np.exp(np.mean(np.log(x["per_seed"]))), rel=1e-9)
    # the calibration: one fixed sigma per seed, and its noise-to-signal is of the adaptive noise's order without VGS
    cal = m["calibration"]
    assert sorted(map(int, cal)) == sorted(p["seeds"])
    for row in cal.values():
        assert row["sigma_fixed"] == pytest.approx(p["pilot_sigma"] * row["nsr_a"] / row["nsr_pilot_on_a"])
        assert 0.2 < row["b_over_a"] < 5
    assert set(m["arms"]) == {"VGS off, adaptive", "VGS off, fixed", "VGS gradient, adaptive", "VGS gradient, fixed",
                              "VGS step, adaptive"}
    assert m["arms"]["VGS off, adaptive"]["vgs_factor"] == 1.0 and m["setup"]["runs"] == 5 * len(p["seeds"])
    assert list((r.output_dir / "figures").glob("*.png"))


@pytest.mark.slow
def test_critic_variance_scaling_findings(tmp_path):
    r, p, m = run_findings(tmp_path, "critic_variance_scaling", CRITIC_IDS)
    std, sharpe = m["findings"]
    assert std["null"] == 1 and std["direction"] == "lower"
    assert sharpe["null"] == 0 and sharpe["direction"] == "higher"
    # per seed: the paired Sharpe differences, whose mean is the point estimate of the mean-Sharpe difference
    rows = {(x["arm"], x["seed"]): x for x in m["per_seed"]}
    want = [rows[("on", s)]["test_sharpe"] - rows[("off", s)]["test_sharpe"] for s in p["seeds"]]
    assert sharpe["per_seed"] == pytest.approx(want) and sharpe["estimate"] == pytest.approx(np.mean(want), abs=1e-9)
    assert set(m["arms"]) == {"on", "off"} and np.isnan(m["arms"]["off"]["clamped_share"])


def _presets(name: str) -> dict:
    "The notebook's presets cell, evaluated (it holds one literal assignment)."
    nb = nbformat.read(ex.find_experiment(name), as_version=4)
    cells = [c for c in nb.cells if "presets" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}: one cell tagged presets"
    ns = {}
    exec(cells[0].source, ns)
    return ns["presets"]


@pytest.mark.parametrize("name", ["ablation_vgs_upgd", "critic_variance_scaling"])
def test_full_preset_is_valid(name):
    "The full preset names known parameters with valid values and at least five seeds."
    full = _presets(name)["full"]
    specs = ex.experiment_parameters(name)
    values = ex.resolve_parameters(specs, full)
    assert len(set(values["seeds"])) >= 5 and values["total_timesteps"] >= 10_000


def _calibrated_sigma():
    "The notebook's calibration function (defined in the ablation notebook, not exported)."
    nb = nbformat.read(ex.find_experiment("ablation_vgs_upgd"), as_version=4)
    src = next(c.source for c in nb.cells if c.cell_type == "code" and "def calibrated_sigma" in c.source)
    ns = {"np": np, "pd": __import__("pandas")}
    exec(src, ns)
    return ns["calibrated_sigma"]


_pos = st.floats(1e-9, 1e3, allow_nan=False, allow_infinity=False)


@given(s=_pos, target=_pos, pilot=_pos, k=st.floats(1e-3, 1e3))
@settings(max_examples=100, deadline=None)
def test_calibrated_sigma_inverts_linear_nsr(s, target, pilot, k):
    "With NSR = c * sigma, the calibrated sigma gives the target NSR; scaling pilot sigma and NSR together changes nothing."
    cal = _calibrated_sigma()
    sigma = cal(s, target, pilot)
    assert sigma * (pilot / s) == pytest.approx(target, rel=1e-9)
    assert cal(s * k, target, pilot * k) == pytest.approx(sigma, rel=1e-9)


@pytest.mark.parametrize("args, name", [((0.0, 1.0, 1.0), "sigma_pilot"), ((1.0, -1.0, 1.0), "nsr_target"),
                                        ((1.0, 1.0, float("nan")), "nsr_pilot"), ((1.0, 1.0, float("inf")), "nsr_pilot")])
def test_calibrated_sigma_rejects(args, name):
    with pytest.raises(ValueError, match=name): _calibrated_sigma()(*args)


@given(sigma=st.floats(1e-8, 1e-2), k=st.floats(0.1, 10.0), seed=st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_fixed_noise_nsr_is_linear_in_sigma(sigma, k, seed):
    "The calibration's premise: on the same gradient, AdaptiveUPGD's fixed-noise noise-to-signal scales with sigma."
    g = torch.randn(64, 8, generator=torch.Generator().manual_seed(seed))
    nsr = []
    for s in (sigma, sigma * k):
        p = torch.nn.Parameter(torch.zeros(64, 8))
        opt = AdaptiveUPGD([p], lr=1e-3, sigma=s, adaptive_noise=False, seed=seed)
        p.grad = g.clone()
        opt.step()
        nsr.append(opt.metrics()["noise_to_signal"])
    assert nsr[1] / nsr[0] == pytest.approx(k, rel=1e-4)
