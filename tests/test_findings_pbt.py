"""Random search at equal compute (`PBTScheduler(exploit=False)`) and the `pbt_vs_random_search` finding of the
`pbt_population` experiment, run tiny."""
import math

import pytest

from tradingrl_nb.pbt import PBTScheduler
from tradingrl_nb.testing import ToyMember
from tradingrl_nb.pbt_runner import run_population

MUT = {"learning_rate": (1e-4, 3e-2, "log"), "vgs_alpha": (0.0, 1.0)}


def _population(tmp_path, name, **kw):
    sched = PBTScheduler(MUT, perturbation_interval=5, seed=7, **kw)
    return run_population(lambda mid: ToyMember(mid, seed=3), sched, n_members=4, n_rounds=4, steps_per_round=5,
                          run_dir=tmp_path / name, progress=False)


def test_random_search_is_pbt_without_exploit_or_explore(tmp_path):
    "Same scheduler seed and member seeds: same start; random search never copies weights nor moves hyperparameters."
    pbt, rs = _population(tmp_path, "pbt"), _population(tmp_path, "rs", exploit=False)
    assert not rs.scheduler.exploit and pbt.scheduler.exploit
    assert (pbt.history.kind == "exploit").sum() > 0
    assert len(rs.history) == 0, rs.history                          # no exploit, no explore
    first = lambda p: p.log[p.log["round"] == 0].set_index("member_id")
    a, b = first(pbt), first(rs)
    assert a["fitness"].tolist() == b["fitness"].tolist()             # equal start: same members, same hyperparameters
    hp = [c for c in a.columns if c.startswith("hp_")]
    assert a[hp].equals(b[hp])
    for mid, g in rs.log.groupby("member_id"):                        # each keeps its initial hyperparameters
        assert (g[hp].nunique() == 1).all() and g["parent"].isna().all()
    assert len(rs.log) == len(pbt.log) == 16                          # equal compute: members x rounds reports
    assert all(r.step == pbt.scheduler.records[m].step for m, r in rs.scheduler.records.items())


def test_random_search_failed_member_restarts_without_a_donor():
    s = PBTScheduler(MUT, exploit=False, seed=0)
    for i in range(3):
        s.add_member(i)
        s.report(i, fitness=float(i), step=5)
    s.mark_failed(2)
    params, hp, fmt = s.replace_failed(2)
    assert params is None and fmt is None and s.records[2].parent is None
    assert [h["kind"] for h in s.history] == ["restart"]


def test_exploit_flag_must_be_bool():
    with pytest.raises(ValueError, match="exploit"): PBTScheduler(MUT, exploit="no")


def test_pbt_population_tiny_gives_the_finding(tmp_path):
    "The experiment, run tiny: one finding over its seeds, a verdict that agrees with its interval, no exploit in random search."
    from tradingrl_nb.experiments import run_experiment
    r = run_experiment("pbt_population", output_dir=tmp_path / "run", device="cpu", progress=False, report=False)
    assert r.ok, r.error
    (f,) = r.metrics["findings"]
    assert f["id"] == "pbt_vs_random_search" and f["direction"] == "higher" and f["null"] == 0
    seeds = r.parameters["seeds"]
    assert f["n_seeds"] == len(f["per_seed"]) == len(seeds) >= 2
    lo, hi = f["ci95"]
    assert lo <= hi and all(math.isfinite(v) for v in (lo, hi, f["estimate"]))
    from tradingrl_nb.findings import verdict_of
    assert f["verdict"] == verdict_of(f)
    runs = r.metrics["per_run"]
    assert sorted((x["seed"], x["method"]) for x in runs) == sorted((s, m) for s in seeds for m in ("pbt", "random_search"))
    assert all(x["exploits"] == x["explores"] == 0 and x["lineages"] == r.parameters["n_members"]
               for x in runs if x["method"] == "random_search")
    by = {(x["seed"], x["method"]): x for x in runs}
    assert f["per_seed"] == pytest.approx([by[s, "pbt"]["test_sharpe"] - by[s, "random_search"]["test_sharpe"] for s in seeds])
    assert all(by[s, "pbt"]["steps"] == by[s, "random_search"]["steps"] for s in seeds)   # equal compute
    assert not list((tmp_path / "run").rglob("*.safetensors"))                              # no checkpoints in the run
    assert {p.name for p in (tmp_path / "run" / "figures").glob("*.png")} >= {"fitness_by_round.png", "population.png"}
    health = r.metrics["health"]                     # every member of every population, judged: did it train?
    assert len(health) == len(seeds) * 2 * r.parameters["n_members"]
    assert all(h["moved"] is not None and h["updates"] > 0 for h in health)
    assert f["untrained_runs"] == sum(h["moved"] is False for h in health)
