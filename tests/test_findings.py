"""results/findings.json: records from stored runs, verdicts from intervals, bit-identical regeneration, refusals."""
import json
import math

import numpy as np
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from tradingrl_nb import findings as fd
from tradingrl_nb.cli import main

ROOT = Path(__file__).resolve().parent.parent


def store(root: Path, name: str, *records: dict, commit: str = "a" * 40, dirty: bool = False, status: str = "ok") -> Path:
    "A stored run folder as `tradingrl run --preset` leaves it: notebook, run.json, metrics.json with findings."
    d = root / name
    d.mkdir(parents=True)
    (d / f"{name}.ipynb").write_text("{}")
    (d / "run.json").write_text(json.dumps(dict(experiment=name, status=status, commit=commit, dirty=dirty)))
    (d / "metrics.json").write_text(json.dumps({"findings": list(records), "other": 1}))
    return d


def rec(id="vgs_effect_value_loss_variance", n=5, interval=(0.8, 0.7, 0.9), **kw):
    return fd.finding(id, [0.8 + 0.01 * i for i in range(n)], interval, 50_000, "ratio", **kw)


def test_findings_json_is_regenerated_bit_identically(tmp_path, capsys):
    store(tmp_path, "b_exp", rec("sappo_attacked_sharpe", interval=(0.1, -0.2, 0.4), detail="clean +0.1"))
    store(tmp_path, "a_exp", rec())
    assert main(["findings", "--results", str(tmp_path)]) == 0
    first = (tmp_path / "findings.json").read_bytes()
    assert main(["findings", "--results", str(tmp_path), "--check"]) == 0
    assert main(["findings", "--results", str(tmp_path)]) == 0
    assert (tmp_path / "findings.json").read_bytes() == first
    found = json.loads(first)
    assert [f["id"] for f in found] == ["vgs_effect_value_loss_variance", "sappo_attacked_sharpe"]   # the order of CLAIMS
    assert found[0]["experiment"] == f"{tmp_path.name}/a_exp/a_exp.ipynb" and found[0]["commit"] == "a" * 40
    assert list(found[0]) == list(fd.FIELDS) + list(fd.REGISTRY_FIELDS)
    assert (found[0]["verdict"], found[1]["verdict"]) == ("holds", "inconclusive")
    # a changed stored run makes --check fail
    m = json.loads((tmp_path / "a_exp" / "metrics.json").read_text())
    m["findings"][0]["per_seed"][0] = 0.5
    (tmp_path / "a_exp" / "metrics.json").write_text(json.dumps(m))
    assert main(["findings", "--results", str(tmp_path), "--check"]) == 1
    assert "differs from what the stored runs give" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (dict(n=2), "rests on 2 seeds; at least 3"),
    (dict(verdict="holds", interval=(0.9, 0.8, 1.2)), "says 'holds' but its interval [0.8, 1.2] gives 'inconclusive'"),
    (dict(direction="higher"), "the claim is 'lower', 1.0"),
    (dict(id="no_such_claim"), "is not a known claim id"),
])
def test_a_bad_stored_finding_is_refused_naming_the_file(tmp_path, change, message):
    c = dict(change)
    r = rec(n=c.pop("n", 5), interval=c.pop("interval", (0.8, 0.7, 0.9)))
    r.update(c)
    store(tmp_path, "exp", r)
    with pytest.raises(ValueError, match=str(tmp_path / "exp" / "metrics.json").replace("/", ".") + ".*" +
                       message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        fd.collect_findings(tmp_path)


def test_runs_that_cannot_be_traced_or_are_heavy_are_refused(tmp_path):
    store(tmp_path / "r1", "exp", rec(), dirty=True)
    with pytest.raises(ValueError, match="differed from commit"): fd.collect_findings(tmp_path / "r1")
    store(tmp_path / "r2", "exp", rec(), commit=None)
    with pytest.raises(ValueError, match="no commit recorded"): fd.collect_findings(tmp_path / "r2")
    store(tmp_path / "r3", "exp", rec(), status="failed")
    with pytest.raises(ValueError, match="status is 'failed'"): fd.collect_findings(tmp_path / "r3")
    d = store(tmp_path / "r4", "exp", rec())
    (d / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="model.safetensors: model weights"): fd.collect_findings(tmp_path / "r4")
    store(tmp_path / "r5", "a", rec())
    store(tmp_path / "r5", "b", rec())
    with pytest.raises(ValueError, match="also measured in"): fd.collect_findings(tmp_path / "r5")


@settings(max_examples=80, deadline=None)
@given(lo=st.floats(-5, 5), width=st.floats(0, 5), null=st.sampled_from([0.0, 1.0]), direction=st.sampled_from(["higher", "lower"]))
def test_verdict_follows_the_interval(lo, width, null, direction):
    hi = lo + width
    v = fd.claim_verdict((lo, hi), null, direction)
    if lo <= null <= hi: assert v == "inconclusive"
    elif (lo > null) == (direction == "higher"): assert v == "holds"
    else: assert v == "refuted"


def test_findings_page_has_a_row_per_finding():
    fs = [rec(), rec("sappo_attacked_sharpe", interval=(-0.3, -0.5, -0.1), detail="a | b")]
    page = fd.findings_markdown(fs, link=lambda f: f"results/{f['id']}.ipynb")
    rows = [l for l in page.splitlines() if l.startswith("| **")]
    assert len(rows) == 2 and "**refuted**" in rows[1] and "a | b" in page
    assert "Not measured yet" in page and "`agent_vs_buy_and_hold`" in page


def test_stored_findings_regenerate_bit_identically():
    "The committed results/findings.json is exactly what `tradingrl findings` gives from the committed stored runs."
    results = ROOT / "results"
    stored = results / "findings.json"
    assert stored.is_file(), "results/findings.json is missing: run `tradingrl findings` and commit it"
    assert main(["findings", "--results", str(results), "--check"]) == 0
    found = json.loads(stored.read_text())
    for f in found:
        c = fd.CLAIMS[f["id"]]
        want = "not testable" if fd.degenerate(f["per_seed"]) or f["untrained_runs"] else \
            fd.size_verdict(f["ci95"], c.null, c.direction, c.claimed, c.sesoi, c.ratio)
        assert f["n_seeds"] >= fd.MIN_SEEDS and f["verdict"] == want and f["holm_verdict"] in fd.VERDICTS
        assert f["source"] == c.source and (f["claimed"] is None) == (c.claimed is None)
        assert (ROOT / "results").parent.joinpath(f["experiment"]).is_file(), f["experiment"]


def test_a_finding_whose_runs_did_not_train_is_not_testable():
    "The learning issue's health rule: one run whose policy did not move makes the measurement no evidence."
    moved, still = {"moved": True}, {"moved": False, "reason": "the policy did not move"}
    f = fd.finding("adaptive_noise_value_loss_variance", [0.58, 0.6, 0.62, 0.59, 0.61], (0.6, 0.5, 0.7), 50_000, "ratio", health=[moved] * 4 + [still])
    assert f["verdict"] == "not testable" and f["untrained_runs"] == 1
    g = fd.finding("adaptive_noise_value_loss_variance", [0.58, 0.6, 0.62, 0.59, 0.61], (0.6, 0.5, 0.7), 50_000, "ratio", health=[moved] * 5)
    assert g["verdict"] == "holds" and g["untrained_runs"] == 0
    stored = fd._checked(f, Path("x/metrics.json"), "ablation_vgs_upgd", "abc")
    assert stored["verdict"] == "not testable"
    with pytest.raises(ValueError, match="not testable"):
        fd._checked({**f, "verdict": "holds"}, Path("x/metrics.json"), "ablation_vgs_upgd", "abc")


# ---- verdicts with sizes (issue: findings v2) ----------------------------------------------------------------------
from hypothesis import given, settings, strategies as st

_num = st.floats(-5, 5, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(_num, _num, st.floats(0.01, 3), st.floats(0, 0.5), st.sampled_from(["higher", "lower"]))
def test_size_verdict_is_symmetric_under_a_mirror(a, b, c, sesoi, direction):
    "Reflecting the interval about no effect and flipping the claimed direction gives the same verdict (differences)."
    lo, hi = sorted((a, b))
    s = 1 if direction == "higher" else -1
    v1 = fd.size_verdict((lo, hi), 0.0, direction, (s * c, s * 2 * c), sesoi)
    other = "lower" if direction == "higher" else "higher"
    v2 = fd.size_verdict((-hi, -lo), 0.0, other, (-s * c, -s * 2 * c), sesoi)
    assert v1 == v2 and v1 in fd.VERDICTS


@settings(max_examples=300, deadline=None)
@given(_num, st.floats(0, 3), st.floats(0.2, 3), st.floats(0, 0.19), st.floats(0.01, 3))
def test_moving_the_interval_toward_the_claim_keeps_what_reached_the_claim(lo, width, c, sesoi, d):
    """A shift toward the claimed side keeps 'holds', and an interval that reached the claimed size ('holds' or
    'inconclusive') is never 'refuted' after it. (An interval that excluded the claimed size can move into the
    equivalence band and read 'refuted' there: that is the rule, not a weakening.)"""
    v0 = fd.size_verdict((lo, lo + width), 0.0, "higher", (c, c), sesoi)
    v1 = fd.size_verdict((lo + d, lo + width + d), 0.0, "higher", (c, c), sesoi)
    if v0 == "holds": assert v1 == "holds", (v0, v1)
    if v0 in ("holds", "inconclusive"): assert v1 != "refuted", (v0, v1)


def test_an_interval_that_misses_the_claim_can_move_into_the_equivalence_band():
    "The case the property above leaves out, pinned: (-0.12, 0.05) excludes 0.2; shifted by 0.03 it lies within +/-0.1."
    assert fd.size_verdict((-0.12, 0.05), 0.0, "higher", (0.2, 0.2), 0.1) == "smaller than claimed"
    assert fd.size_verdict((-0.09, 0.08), 0.0, "higher", (0.2, 0.2), 0.1) == "refuted"


@given(st.floats(0.2, 3), st.floats(0.001, 0.09))
def test_the_four_cases_against_a_claimed_size(c, sesoi):
    v = lambda lo, hi: fd.size_verdict((lo, hi), 0.0, "higher", (c, 2 * c), sesoi)
    assert v(c / 2, 3 * c) == "holds" and v(-c, 3 * c) == "inconclusive"
    assert v(c / 100 + sesoi, c / 2) == "smaller than claimed" and v(-3 * c, -c) == "refuted"
    assert v(-sesoi / 2, sesoi / 2) == "refuted"                       # equivalent to no effect


def test_the_registry_states_each_claim_and_its_size_sensibly():
    for c in fd.CLAIMS.values():
        assert c.source and c.framing and (c.framing == "as written" or c.framing.startswith("reframed: ")), c.id
        assert c.sesoi > 0, c.id
        if c.claimed is not None:                 # the claimed size lies on the claimed side, beyond the SESOI
            f = (lambda x: math.log(x / c.null)) if c.ratio else (lambda x: x - c.null)
            s = 1 if c.direction == "higher" else -1
            near, far = (s * f(x) for x in c.claimed)
            assert sesoi_ok(near, c.sesoi) and far >= near, c.id
    assert "lstm_reset_convergence" in fd.CLAIMS and "seed 001" in fd.CLAIMS["lstm_reset_convergence"].source
    assert fd.CLAIMS["vgs_effect_value_loss_variance"].claimed is None            # the 30-50% is the adaptive-noise fix's
    # experiments that measure a claim several ways name the measurement the verdict reads before the run
    for cid in ("agent_vs_buy_and_hold", "sappo_attacked_sharpe", "variance_scaling_value_loss_std"):
        assert fd.CLAIMS[cid].primary and fd.CLAIMS[cid].forks, cid
    assert "paper" in fd.CLAIMS["sappo_attacked_sharpe"].source.lower() or "Zhang" in fd.CLAIMS["sappo_attacked_sharpe"].source


def sesoi_ok(near: float, sesoi: float) -> bool: return near > sesoi


def test_holm_adjusted_p_values_and_verdicts_never_claim_more_than_the_raw_ones():
    assert fd.holm_adjusted([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert fd.holm_adjusted([0.2]) == [0.2] and fd.holm_adjusted([0.0, 0.5]) == [0.0, 0.5]
    strong = [0.7, 0.72, 0.66, 0.71, 0.69, 0.68]
    weak = [0.9, 1.02, 0.93, 0.97, 0.95, 0.91]
    fs = [fd.finding("variance_scaling_value_loss_std", strong, (0.69, 0.67, 0.71), 1000, "ratio"),
          fd.finding("adaptive_noise_value_loss_variance", weak, (0.95, 0.92, 0.99), 1000, "ratio")]
    fs += [fd.finding("vgs_effect_value_loss_variance", [1.0, 1.02, 0.98, 1.01, 0.99], (1.0, 0.98, 1.02), 1000, "ratio")] * 10
    holm = fd.holm_verdicts(fs)
    assert holm[0] == "holds"                                   # p about 1e-9: survives twelve tests
    assert fs[1]["verdict"] == "smaller than claimed" and holm[1] in ("smaller than claimed", "inconclusive")


def test_holm_never_strengthens_a_verdict_whose_interval_holds_the_markets_luck():
    """Seeds that agree closely (their t-test alone would call it) on one noisy market path: the finding's own interval,
    which resamples market days, is inconclusive, and so must its Holm verdict be; its MDE is the interval's, not the seeds'."""
    import numpy as np
    from tradingrl_nb.stats import paired_sharpe_difference_ci
    rng = np.random.default_rng(4)
    market = rng.normal(0.0004, 0.01, 250)
    A = market + rng.normal(0.0, 0.002, (5, 250))             # an index holder against a cash-like arm:
    B = rng.normal(0.0002, 0.005, (5, 250))                   # the difference carries the path's luck
    ci = paired_sharpe_difference_ci(A, B, reduce="mean", reps=300)
    inputs = fd.interval_inputs("paired_sharpe_difference_ci", returns_a=A, returns_b=B, reduce="mean", reps=300)
    per_seed = [0.98, 1.01, 1.0, 0.99, 1.02]                  # the seeds' own spread: tiny
    f = fd.finding("variance_scaling_sharpe", per_seed, ci, 1000, "Sharpe difference", inputs=inputs)
    filler = fd.finding("vgs_effect_value_loss_variance", [1.0, 1.02, 0.98, 1.01, 0.99], (1.0, 0.98, 1.02), 1000, "ratio")
    assert f["verdict"] == "inconclusive" and fd.seed_p_value(per_seed, fd.CLAIMS[f["id"]]) < 1e-6
    assert fd.holm_verdicts([f, filler])[0] == "inconclusive"
    [g, _] = fd.with_family([f, filler])
    assert g["mde"] > (ci.high - ci.low) / 2 and g["p_value"] > 0.05


def test_a_bootstrapped_interval_is_recomputed_from_its_stored_returns(tmp_path):
    "The check recomputes a finding's interval from the inputs it stored; an edited daily return makes it fail, naming the run."
    import numpy as np
    from tradingrl_nb.stats import paired_sharpe_difference_ci
    rng = np.random.default_rng(1)
    A, B = rng.normal(5e-4, 0.01, (5, 250)), rng.normal(0.0, 0.01, (5, 250))
    ci = paired_sharpe_difference_ci(A, B, reduce="mean", reps=300)
    inputs = fd.interval_inputs("paired_sharpe_difference_ci", returns_a=A, returns_b=B, reduce="mean", reps=300)
    per_seed = [0.1, 0.2, 0.15, 0.05, 0.12]
    store(tmp_path, "exp", fd.finding("variance_scaling_sharpe", per_seed, ci, 1000, "Sharpe difference", inputs=inputs))
    [f] = fd.collect_findings(tmp_path)
    assert f["recomputed"] == "paired_sharpe_difference_ci" and "inputs" not in f
    m = json.loads((tmp_path / "exp" / "metrics.json").read_text())
    m["findings"][0]["inputs"]["args"]["returns_a"][2][7] += 0.05
    (tmp_path / "exp" / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"exp.metrics\.json: finding 'variance_scaling_sharpe': the stored inputs give"):
        fd.collect_findings(tmp_path)
    with pytest.raises(ValueError, match="is not one of"): fd.interval_inputs("eval", x=[1.0])
    with pytest.raises(ValueError, match="non-finite"): fd.interval_inputs("mean_ci", values=[1.0, float("nan")])


def test_seeds_needed_reaches_the_claimed_size_and_no_fewer():
    from scipy import stats as st
    c = fd.CLAIMS["variance_scaling_sharpe"]
    per_seed = [0.3, -0.1, 0.2, 0.0, 0.4]
    n = fd.seeds_needed(per_seed, c)
    target, s = fd.target_effect(c), float(np.std(per_seed, ddof=1))
    mde = lambda k: (st.t.ppf(0.975, k - 1) + st.t.ppf(0.8, k - 1)) * s / math.sqrt(k)
    assert n is not None and mde(n) <= target < mde(n - 1)
    assert fd.seeds_needed([1.0] * 5 + [1.0 + 1e-9], c) == 3           # almost no spread: the minimum
    other = dict(id="variance_scaling_value_loss_std", experiment="results/x/critic_variance_scaling.ipynb", n_seeds=5,
                 per_seed=[0.9, 1.0, 0.95, 1.02, 0.97])
    mine = dict(id=c.id, experiment="results/x/critic_variance_scaling.ipynb", n_seeds=5, per_seed=per_seed)
    plan = fd.power_plan([mine, other], {"critic_variance_scaling": 7200.0}, budget_s=3600)
    assert (plan.planned == fd.MIN_SEEDS).all(), "2 h a seed in a 1 h budget: the minimum, for both claims of the experiment"
    assert bool(plan.loc[c.id, "underpowered"]) == (n > fd.MIN_SEEDS) and plan.loc[c.id, "needed"] == n
    plan = fd.power_plan([mine, other], {"critic_variance_scaling": 1.0}, budget_s=3600)
    assert (plan.planned == max(n, fd.seeds_needed(other["per_seed"], fd.CLAIMS[other["id"]]), fd.MIN_SEEDS)).all()
    assert not plan.underpowered.any()
