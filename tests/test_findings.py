"""results/findings.json: records from stored runs, verdicts from intervals, bit-identical regeneration, refusals."""
import json
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
    assert list(found[0]) == list(fd.FIELDS)
    assert (found[0]["verdict"], found[1]["verdict"]) == ("holds", "inconclusive")
    # a changed stored run makes --check fail
    m = json.loads((tmp_path / "a_exp" / "metrics.json").read_text())
    m["findings"][0]["per_seed"][0] = 0.5
    (tmp_path / "a_exp" / "metrics.json").write_text(json.dumps(m))
    assert main(["findings", "--results", str(tmp_path), "--check"]) == 1
    assert "differs from what the stored runs give" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (dict(n=4), "rests on 4 seeds; at least 5"),
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
    store(tmp_path / "r5", "a", rec()); store(tmp_path / "r5", "b", rec())
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
        assert f["n_seeds"] >= fd.MIN_SEEDS and f["verdict"] == fd.claim_verdict(f["ci95"], f["null"], f["direction"])
        assert (ROOT / "results").parent.joinpath(f["experiment"]).is_file(), f["experiment"]


def test_a_finding_whose_runs_did_not_train_is_not_testable():
    "The learning issue's health rule: one run whose policy did not move makes the measurement no evidence."
    moved, still = {"moved": True}, {"moved": False, "reason": "the policy did not move"}
    f = fd.finding("adaptive_noise_value_loss_variance", [0.6] * 5, (0.6, 0.5, 0.7), 50_000, "ratio", health=[moved] * 4 + [still])
    assert f["verdict"] == "not testable" and f["untrained_runs"] == 1
    g = fd.finding("adaptive_noise_value_loss_variance", [0.6] * 5, (0.6, 0.5, 0.7), 50_000, "ratio", health=[moved] * 5)
    assert g["verdict"] == "holds" and g["untrained_runs"] == 0
    stored = fd._checked(f, Path("x/metrics.json"), "ablation_vgs_upgd", "abc")
    assert stored["verdict"] == "not testable"
    with pytest.raises(ValueError, match="not testable"):
        fd._checked({**f, "verdict": "holds"}, Path("x/metrics.json"), "ablation_vgs_upgd", "abc")
