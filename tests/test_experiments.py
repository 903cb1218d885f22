"""The papermill runner (tradingrl_nb.experiments): parameters, runs, failures, sweeps, results."""
import json, re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from tradingrl_nb import experiments as ex
from tradingrl_nb import runtable as rt
from tradingrl_nb import record
from tradingrl_nb import fileio
from tradingrl_nb import rundir
from tradingrl_nb import params as P
from tradingrl_nb.sweep import sweep
from tradingrl_nb.testing import TINY_PARAMS, make_notebook


# ---------------------------------------------------------------- parameters
def test_parse_parameters_types_defaults_help():
    specs = P.parse_parameters(TINY_PARAMS + "n: int | None = None\nsteps = 2 ** 8\nimport os\nseeds = (0, 1)\n")
    assert list(specs) == ["x", "scale", "label", "fail_at", "output_dir", "n", "steps", "seeds"]
    assert (specs["x"].type, specs["x"].default, specs["x"].help) == ("int", 2, "a number")
    assert (specs["scale"].type, specs["label"].type, specs["seeds"].type) == ("float", "str", "tuple")
    assert (specs["n"].type, specs["n"].optional) == ("int", True)
    assert specs["output_dir"].type == "any" and specs["steps"].default == "2 ** 8"


_literals = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                      st.booleans(), st.text(alphabet="abcxyz_-. 019", max_size=12))


@given(v=_literals)
@settings(max_examples=60, deadline=None)
def test_parameter_roundtrip(v):
    "A default's type is inferred, and the command-line string of a value of that type converts back to it."
    spec = P.parse_parameters(f"p = {v!r}\n")["p"]
    assert spec.default == v and spec.type == type(v).__name__
    text = v if isinstance(v, str) else repr(v)
    assert P.coerce_value(spec, text) == v
    assert type(P.coerce_value(spec, text)) is type(v)


@pytest.mark.parametrize("given_, message", [
    ({"y": "1"}, "unknown parameter(s) 'y'"),
    ({"x": "two"}, "'x': 'two' is not a valid int"),
    ({"x": "2.5"}, "not a valid int"),
    ({"x": True}, "not a valid int"),
    ({"scale": "fast"}, "not a valid float"),
    ({"label": None}, "not a valid str"),
    ({"output_dir": "/tmp"}, "set by the runner"),
])
def test_resolve_parameters_rejects(given_, message):
    specs = P.parse_parameters(TINY_PARAMS)
    with pytest.raises(ValueError) as e: ex.resolve_parameters(specs, given_)
    assert message in str(e.value)
    if "unknown" in message: assert "known parameters: x (int), scale (float), label (str), fail_at (int)" in str(e.value)


def test_resolve_parameters_converts():
    specs = P.parse_parameters(TINY_PARAMS)
    got = ex.resolve_parameters(specs, {"x": "1e3", "scale": "3", "label": "None"})
    assert got == {"x": 1000, "scale": 3.0, "label": "None", "fail_at": -1, "output_dir": None}
    assert type(got["scale"]) is float


def test_unknown_experiment_lists_known(tiny):
    with pytest.raises(ValueError) as e: ex.find_experiment("tinny")
    assert "unknown experiment 'tinny'" in str(e.value) and "tiny" in str(e.value) and "data_summary" in str(e.value)
    assert ex.find_experiment("tiny") == tiny.resolve()
    assert P.list_experiments()["tiny"] == tiny.resolve()


def test_notebook_without_parameters_cell(tmp_path):
    nb = make_notebook(tmp_path / "untagged.ipynb", "x = 1\n", "x", tag=False)
    with pytest.raises(ValueError, match="no code cell tagged 'parameters'"): ex.experiment_parameters(nb)


def test_device_is_checked_before_running(tiny):
    with pytest.raises(ValueError, match="no 'device' parameter"): ex.prepare_run("tiny", device="cpu")
    nb = make_notebook(tiny.parent / "dev.ipynb", 'device = "auto"\noutput_dir = None\n', "print(device)")
    assert ex.prepare_run(nb, device="cpu")[1]["device"] == "cpu"
    with pytest.raises(ValueError, match="device 'tpu'"): ex.prepare_run(nb, {"device": "tpu"})


# ---------------------------------------------------------------- runs
def test_run_writes_everything(tiny, tmp_path):
    out = tmp_path / "one"
    r = ex.run_experiment("tiny", {"x": "3", "label": "b"}, output_dir=out, progress=False)
    assert r.ok and r.output_dir == out.resolve()
    assert json.loads((out / "params.json").read_text()) == {"x": 3, "scale": 1.5, "label": "b", "fail_at": -1}
    assert json.loads((out / "metrics.json").read_text()) == {"y": 4.5, "nested": {"z": 5.5, "label": "b"}}
    assert r.metrics["y"] == 4.5
    assert (out / "figures" / "line.png").stat().st_size > 1000
    assert json.loads((out / "run.json").read_text())["status"] == "ok"
    nb = nbformat.read(out / "tiny.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "x = 3" in injected[0].source and str(out.resolve()) in injected[0].source
    html = (out / "tiny.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "RuntimeError: boom" not in html and "data:image/png" in html


def test_runner_injects_the_run_context_as_a_parameter_not_environment_variables(tiny, tmp_path):
    """A notebook that declares `run_context` gets the progress file, total steps and TensorBoard folder as an injected
    parameter; the kernel's environment carries none of them, and params.json does not record it."""
    cell = ("import json, os, pathlib\n"
            "pathlib.Path(output_dir, 'ctx.json').write_text(json.dumps(dict(ctx=run_context, env=sorted(\n"
            "    k for k in os.environ if k.startswith('TRADINGRL_') and 'PROGRESS' in k or 'TENSORBOARD' in k))))")
    make_notebook(tiny.parent / "ctx.ipynb", "total_timesteps = 96\noutput_dir = None\nrun_context = None\n", cell)
    out = tmp_path / "ctx-run"
    assert ex.run_experiment("ctx", output_dir=out, progress=False).ok
    got = json.loads((out / "ctx.json").read_text())
    assert got["ctx"] == dict(progress=str(out.resolve() / ".progress.json"), total=96,
                              tensorboard=str(out.resolve() / "tensorboard"))
    assert got["env"] == [] and "run_context" not in json.loads((out / "params.json").read_text())
    with pytest.raises(ValueError, match="run_context"):
        ex.run_experiment("ctx", {"run_context": "x"}, output_dir=tmp_path / "other", progress=False)


def test_default_run_dir_is_under_settings_runs_dir(tiny, tmp_path):
    r = ex.run_experiment("tiny", progress=False, report=False)
    assert r.output_dir.parent == (tmp_path / "runs").resolve() and r.output_dir.name.endswith("-tiny")
    r2 = ex.run_experiment("tiny", progress=False, report=False)
    assert r2.output_dir != r.output_dir  # same second: a fresh folder, never a shared one


def test_failing_cell_keeps_notebook_and_names_cell(tiny, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(ex.ExperimentFailed) as e:
        ex.run_experiment("tiny", {"fail_at": 2}, output_dir=out, progress=False)
    msg = str(e.value)
    assert "line 3: `raise RuntimeError(f'boom at x={x}')`" in msg and "RuntimeError: boom at x=2" in msg
    assert "In [" in msg and str(out.resolve() / "tiny.ipynb") in msg
    res = e.value.result
    assert res.status == "failed" and res.metrics == {} and not (out / "metrics.json").exists()
    nb = nbformat.read(out / "tiny.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].evalue == "boom at x=2"
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert (out / "tiny.html").exists()
    # a rerun into the same folder that succeeds does not keep stale metrics, and a failing one drops old ones
    assert ex.run_experiment("tiny", output_dir=out, progress=False, overwrite=True).ok and (out / "metrics.json").exists()
    assert not ex.run_experiment("tiny", {"fail_at": 2}, output_dir=out, progress=False, raise_on_failure=False,
                                 overwrite=True).ok
    assert not (out / "metrics.json").exists()
    with pytest.raises(ValueError, match="already holds a run \\(status failed\\); pass --overwrite"):
        ex.run_experiment("tiny", output_dir=out, progress=False)


def test_bad_input_creates_no_run_folder(tiny, tmp_path):
    for params in ({"nope": 1}, {"x": "one"}):
        with pytest.raises(ValueError): ex.run_experiment("tiny", params, progress=False)
    assert not (tmp_path / "runs").exists()


def _check_data_summary(m):
    from tradingrl_nb.data import load_market_data
    n = len(load_market_data("sp500"))
    assert m["train"]["rows"] + m["val"]["rows"] + m["test"]["rows"] == n - 1  # daily returns of every bar but the first
    assert m["test"]["start"].startswith("2015-01-02") and m["test"]["ann_vol"] > 0


def _check_train_agent(m):
    from tradingrl_nb.data import load_market_data
    close = load_market_data("sp500")["close"]
    t1 = close.index[close.index > "2014-12-31"][1]
    bh = m["test"]["buy_and_hold"]
    # buy-and-hold over the test span: decided at the first test close, filled at the next one (next-close
    # execution), so the close-to-close return from the second test day, less the 2 bp entry cost
    assert bh["total_return"] == pytest.approx(close.iloc[-1] / close[t1] / (1 + 2e-4) - 1, rel=1e-9)
    assert set(m["test"]) == {"agent", "buy_and_hold", "momentum", "flat", "random"}
    assert m["test"]["flat"]["total_return"] == 0.0 and m["test"]["agent"]["max_drawdown"] <= 0
    assert m["training"]["timesteps"] >= 2048 and m["training"]["n_evals"] == 2
    assert m["span"] == {"train_end": "2012-12-31", "val_start": "2013-01-02", "test_start": "2015-01-02", "test_end": "2018-12-31"}


def _check_ablation(m):
    assert m["setup"]["runs"] == 5 * len(m["setup"]["seeds"])      # five arms per seed
    assert len(m["calibration"]) == len(m["setup"]["seeds"])       # one fixed-noise calibration per seed


def _check_critic_variance_scaling(m):
    assert set(m["arms"]) == {"on", "off"}


def _check_findings(name, m):
    "An experiment that measures claims records exactly those, each with one value per seed and a verdict from its interval."
    from tradingrl_nb.claims import CLAIMS
    from tradingrl_nb.findings import verdict_of
    expected = [c.id for c in CLAIMS.values() if c.experiment == name]
    if not expected: return
    found = m["findings"]
    assert [f["id"] for f in found] == expected
    for f in found:
        assert f["n_seeds"] == len(f["per_seed"]) >= 1 and f["steps_per_run"] > 0
        assert f["verdict"] == verdict_of(f)          # size rule; untrained runs or no spread: not testable


def _check_pbt(m):
    from tradingrl_nb.data import load_market_data
    close = load_market_data("sp500")["close"]
    t1 = close.index[close.index > "2014-12-31"][1]   # next-close execution: filled at the second test close
    assert m["test"]["buy_and_hold"]["total_return"] == pytest.approx(close.iloc[-1] / close[t1] / (1 + 2e-4) - 1, rel=1e-9)
    assert set(m["members"]) == {"member_0", "member_1"} and m["pbt"]["exploits"] == 2   # one exploit per round
    best = m["members"][f"member_{m['pbt']['best_member']}"]
    assert best["sharpe"] == m["test"]["best_member"]["sharpe"]
    assert all(1e-5 <= v["learning_rate"] <= 1e-3 and 0.05 <= v["cvar_alpha"] <= 0.5 for v in m["members"].values())


def _check_sappo(m):
    assert set(m["test_sharpe"]) == set(m["mean_kl"]) == {"ppo", "sappo"}
    for k in ("ppo", "sappo"):
        assert set(m["test_sharpe"][k]) == {"eps=0", "eps=0.1"}
        assert m["mean_kl"][k]["eps=0"] == 0 and m["mean_kl"][k]["eps=0.1"] > 0   # the attack moves the policy
        assert m["sharpe_drop_at_max_eps"][k] == pytest.approx(m["test_sharpe"][k]["eps=0"] - m["test_sharpe"][k]["eps=0.1"])


def _check_walk_forward(m):
    w = m["windows"]
    assert set(w) == {"test 2008", "test 2018", "pooled"}
    for r in w.values():
        assert r["diff_low"] <= r["diff"] <= r["diff_high"] and r["agent_low"] <= r["agent_sharpe"] <= r["agent_high"]
        assert r["verdict"] in {"skill", "worse than buy-and-hold", "inconclusive"} and 0 <= r["psr"] <= 1 and 0 <= r["dsr"] <= 1
    assert w["pooled"]["days"] == w["test 2008"]["days"] + w["test 2018"]["days"]
    assert m["verdict"] == w["pooled"]["verdict"] and m["setup"]["execution"] == "next_close"


CHECKS = {"data_summary": _check_data_summary, "train_agent": _check_train_agent, "ablation_vgs_upgd": _check_ablation,
          "pbt_population": _check_pbt, "robustness_sappo": _check_sappo, "walk_forward": _check_walk_forward,
          "critic_variance_scaling": _check_critic_variance_scaling,
          "lstm_reset_after_exploit": lambda m: None, "return_snapshot_timing": lambda m: None}   # their findings: below


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(P.list_experiments()))
def test_each_experiment_runs_with_tiny_defaults(name, tmp_path):
    "Every notebook in nbs/experiments runs for real with its own defaults and records metrics and figures."
    specs = ex.experiment_parameters(name)
    assert "device" in specs and specs["device"].default == "auto", "every experiment takes a device parameter"
    assert "output_dir" in specs and specs["output_dir"].default is None
    r = ex.run_experiment(name, output_dir=tmp_path / name, device="cpu", progress=False)
    assert r.ok, r.error
    # the file holds non-finite values as "nan"/"inf" strings; r.metrics holds them as floats (nan != nan)
    assert r.metrics and json.loads((r.output_dir / "metrics.json").read_text()) == fileio.to_jsonable(r.metrics)
    assert list((r.output_dir / "figures").glob("*.png")), "each experiment saves at least one figure"
    assert (r.output_dir / f"{name}.html").stat().st_size > 10_000
    assert json.loads((r.output_dir / "params.json").read_text())["device"] == "cpu"
    assert name in CHECKS, f"add a check of {name}'s metrics to CHECKS"
    CHECKS[name](r.metrics)
    _check_findings(name, r.metrics)


# ---------------------------------------------------------------- sweeps and results
def test_sweep_continues_after_failure_and_results_table(tiny, tmp_path):
    root = tmp_path / "sw"
    table = sweep("tiny", {"x": [1, 2, 3]}, {"fail_at": 2, "scale": 2.0}, jobs=2, output_dir=root, echo=None)
    assert list(table["x"]) == [1, 2, 3] and list(table["status"]) == ["ok", "failed", "ok"]
    assert "boom at x=2" in table["error"].iloc[1] and pd.isna(table["error"].iloc[0])
    assert list(table["y"].iloc[[0, 2]]) == [2.0, 6.0]
    runs = sorted(p.name for p in root.iterdir())
    assert runs == ["000-x=1", "001-x=2", "002-x=3"] and (root / "001-x=2" / "tiny.ipynb").exists()

    res = rt.results(root, sort="y", ascending=False)
    assert list(res["run"]) == ["002-x=3", "000-x=1", "001-x=2"]  # failed run (no y) last
    assert {"experiment", "status", "wall_s", "x", "scale", "y", "nested.z", "nested.label"} <= set(res.columns)
    assert list(res["status"]) == ["ok", "ok", "failed"] and "boom" in res["error"].iloc[2]
    csv = tmp_path / "r.csv"
    res.to_csv(csv, index=False)
    back = pd.read_csv(csv)
    assert list(back["y"].iloc[:2]) == [6.0, 2.0] and list(back["x"]) == [3, 1, 2]
    with pytest.raises(ValueError, match="cannot sort by 'nope'"): rt.results(root, sort="nope")
    assert rt.results(root, experiment="other").empty


def test_sweep_validates_every_combination_first(tiny, tmp_path):
    with pytest.raises(ValueError, match="'x': 'many' is not a valid int"):
        sweep("tiny", {"x": ["1", "many"]}, output_dir=tmp_path / "sw", echo=None)
    with pytest.raises(ValueError, match="both fixed and in the grid"):
        sweep("tiny", {"x": [1]}, {"x": 2}, output_dir=tmp_path / "sw", echo=None)
    assert not (tmp_path / "sw").exists()


def test_results_metric_name_colliding_with_parameter(tmp_path):
    d = tmp_path / "r1"
    d.mkdir()
    (d / "params.json").write_text(json.dumps({"x": 1}))
    (d / "metrics.json").write_text(json.dumps({"x": 5, "s": [1, 2]}))
    t = rt.results(tmp_path)
    assert t.loc[0, "x"] == 1 and t.loc[0, "metrics.x"] == 5 and t.loc[0, "s"] == "[1, 2]"


def test_results_add_bootstrap_psr_dsr_for_runs_with_returns(tmp_path):
    "Runs that recorded daily returns get stats.* columns; DSR counts the runs of one experiment as trials."
    rng = np.random.default_rng(0)
    days = pd.bdate_range("2015-01-01", periods=500, name="date")
    bh = rng.normal(3e-4, 0.01, len(days))
    for i, drift in enumerate([1e-3, 0.0, -1e-3]):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps({"seed": i}))
        (d / "run.json").write_text(json.dumps({"experiment": "exp", "status": "ok"}))
        (d / "metrics.json").write_text(json.dumps({"x": i}))
        pd.DataFrame({"agent": bh + drift + rng.normal(0, 0.002, len(days)), "buy_and_hold": bh}, index=days).to_csv(d / "returns.csv")
    d = tmp_path / "no_returns"
    d.mkdir()
    (d / "params.json").write_text(json.dumps({"seed": 9}))
    t = rt.results(tmp_path, reps=200).set_index("run")
    assert t.loc["r0", "stats.n_trials"] == 3 and pd.isna(t.loc["no_returns", "stats.psr"])
    assert t.loc["r0", "stats.diff_low"] > 0 and t.loc["r0", "stats.verdict"] == "skill"      # +0.25 daily-bp*100 drift
    assert t.loc["r2", "stats.diff_high"] < 0 and t.loc["r2", "stats.verdict"] == "worse than buy-and-hold"
    assert t.loc["r0", "stats.sharpe_low"] <= t.loc["r0", "stats.sharpe"] <= t.loc["r0", "stats.sharpe_high"]
    assert t.loc["r0", "stats.dsr"] <= t.loc["r0", "stats.psr"]
    assert "stats.psr" not in rt.results(tmp_path, statistics=False)


def test_save_metrics_is_strict_json(tmp_path):
    import numpy as np
    record.save_metrics({"a": np.float64("nan"), "b": np.arange(3), "t": pd.Timestamp("2018-01-02")}, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": "nan", "b": [0, 1, 2], "t": "2018-01-02T00:00:00"}
    record.save_metrics({"up": float("inf"), "down": np.float32("-inf")}, tmp_path)
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["up"] == "inf" and stored["down"] == "-inf"
    back = fileio.from_jsonable(stored)
    assert back["up"] == float("inf") and back["down"] == float("-inf") and back["a"] != back["a"]
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="metrics.json: holds a list, not an object"): record.save_metrics({"x": 1}, tmp_path)
    with pytest.raises(TypeError, match="cannot store"): record.save_metrics({"m": object()}, tmp_path)
    assert record.save_figure(None, "x", None) is None


def test_training_log_rows_per_iteration():
    "One row per PPO iteration, timesteps continuing across learn() calls, each row with the update's own values."
    import torch
    from tradingrl_nb.data import synthetic_market
    from tradingrl_nb.vec_env import TradingVecEnv
    from tradingrl_nb.ppo import DistributionalPPO
    torch.set_num_threads(1)
    env = TradingVecEnv(synthetic_market(400, seed=1), n_envs=2, seed=0, episode_length=64, window=8)
    model = DistributionalPPO("MlpLstmPolicy", env, n_steps=32, batch_size=64, n_epochs=2, sequence_length=16, seed=0,
                              device="cpu", policy_kwargs=dict(lstm_hidden_size=8, n_quantiles=8))
    log = record.TrainingLog(model)
    log.learn(128)
    log.learn(64)
    f = log.frame()
    assert list(f.index) == [64, 128, 192]
    assert list(f["train/n_updates"]) == [2, 4, 6]          # n_epochs updates after each rollout, in order
    assert f["rollout/reward_mean"].notna().all() and (f["train/value_loss"] > 0).all()
    assert model.num_timesteps == 192


# ---------------------------------------------------------------- declared ranges, the run lock, the default device
@given(lo=st.integers(-1000, 1000), width=st.one_of(st.integers(0, 1000), st.none()), lc=st.booleans(), hc=st.booleans(),
       v=st.integers(-2500, 2500))
@settings(max_examples=80, deadline=None)
def test_declared_interval_accepts_exactly_its_values(lo, width, lc, hc, v):
    "`in [lo, hi)` etc.: a value passes exactly when it lies in the interval (`inf`: no upper end)."
    hi = float("inf") if width is None else lo + width
    text = f"{'[' if lc else '('}{lo}, {'inf' if width is None else hi}{']' if hc else ')'}"
    spec = P.parse_parameters(f"n = 5   # a count, in {text}\n")["n"]
    inside = (v > lo or (lc and v == lo)) and (v < hi or (hc and v == hi))
    if inside: assert P.coerce_value(spec, str(v)) == v
    else:
        with pytest.raises(ValueError, match=r"parameter 'n': -?\d+ is outside its range"): P.coerce_value(spec, str(v))


def test_declared_choices_and_bad_declarations():
    specs = P.parse_parameters("kind = 'mad'  # attack, in {mad, pgd}\nk = 3  # in {1, 3, 5}\nlr = 1e-3  # in (0, 1e-1]\n")
    assert specs["kind"].choices == ("mad", "pgd") and specs["k"].choices == (1, 3, 5)
    assert P.coerce_value(specs["kind"], "pgd") == "pgd" and P.coerce_value(specs["k"], "5") == 5
    assert P.coerce_value(specs["lr"], "0.1") == 0.1 and specs["lr"].domain() == "(0, 0.1]"
    with pytest.raises(ValueError, match=r"'fgsm' is not one of \{mad, pgd\}"): P.coerce_value(specs["kind"], "fgsm")
    with pytest.raises(ValueError, match=r"0.2 is outside its range \(0, 0.1\]"): P.coerce_value(specs["lr"], "0.2")
    with pytest.raises(ValueError, match="parameter 'n': range .* the low end is above the high end"):
        P.parse_parameters("n = 1  # in [5, 1]\n")
    assert P.parse_parameters("w = 2  # days in (calendar) order\n")["w"].bounds is None   # prose, not a range


def test_the_run_folder_is_locked_while_a_run_writes(tiny, tmp_path):
    out = tmp_path / "r"
    with ex.claim_run_dir(out):
        with pytest.raises(ValueError, match="is in use by a run in progress"):
            ex.run_experiment("tiny", output_dir=out, progress=False)
    assert ex.run_experiment("tiny", output_dir=out, progress=False).ok   # free again
    assert rundir.lock_held(out) is False
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not empty and no tradingrl run created it"):
        ex.run_experiment("tiny", output_dir=other, progress=False, overwrite=True)
    assert (other / "thesis.tex").read_text() == "precious"


def test_device_none_means_the_settings_device(tiny, monkeypatch):
    nb = make_notebook(tiny.parent / "dev.ipynb", 'device = "cpu"\noutput_dir = None\n', "print(device)")
    assert ex.prepare_run(nb)[1]["device"] == "auto"
    monkeypatch.setenv("TRADINGRL_DEVICE", "cpu")
    assert ex.prepare_run(nb)[1]["device"] == "cpu"
    assert ex.prepare_run(nb, {"device": "auto"})[1]["device"] == "auto"     # -p device wins over the settings
    assert ex.prepare_run("tiny", device="auto")[1] == ex.prepare_run("tiny")[1]   # no device parameter: auto is ignored


# ---------------------------------------------------------------- presets and stored runs
def _with_presets(path: Path, presets: str) -> Path:
    nb = nbformat.read(path, as_version=4)
    c = nbformat.v4.new_code_cell(presets)
    c.metadata["tags"] = ["presets"]
    nb.cells.insert(2, c)
    nbformat.write(nb, path)
    return path


def test_preset_run_goes_to_results_with_its_preset_and_commit(tiny, tmp_path, monkeypatch):
    _with_presets(tiny, 'presets = {"full": dict(x=5, label="big")}')
    monkeypatch.chdir(tmp_path)                      # no settings.ini above the notebook: ./results
    r = ex.run_experiment("tiny", {"label": "explicit"}, preset="full", progress=False)
    assert r.output_dir == (tmp_path / "results" / "tiny").resolve()
    assert r.metrics["y"] == 5 * 1.5 and r.metrics["nested"]["label"] == "explicit"   # -p wins over the preset
    info = json.loads((r.output_dir / "run.json").read_text())
    assert info["preset"] == "full" and "commit" in info and "dirty" in info
    assert not (r.output_dir / "tensorboard").exists()
    with pytest.raises(ValueError, match="already holds a run"):    # a stored run is not replaced silently
        ex.run_experiment("tiny", preset="full", progress=False)


@pytest.mark.parametrize("presets, message", [
    ('presets = {"full": dict(nope=1)}', "preset 'full' sets unknown parameter(s) ['nope']"),
    ('presets = {"full": dict(x=len([1]))}', "presets must be literal values"),
    ('presets = 3', "presets must map names to dicts"),
    ('presets = {"full": dict(x=-1)}\npresets = {}', "one assignment"),
])
def test_bad_presets_are_refused_naming_the_notebook(tiny, presets, message):
    _with_presets(tiny, presets)
    with pytest.raises(ValueError, match=re.escape(message)):
        ex.prepare_run("tiny", preset="full")


def test_unknown_preset_names_the_presets(tiny):
    _with_presets(tiny, 'presets = {"full": dict(x=3)}')
    with pytest.raises(ValueError, match=r"has no preset 'huge' \(its presets: full\)"):
        ex.prepare_run("tiny", preset="huge")
    assert ex.prepare_run("tiny", preset="full")[1]["x"] == 3


def test_a_kernel_that_dies_while_starting_is_started_again(tiny, monkeypatch):
    "A kernel that dies before replying to kernel_info (no cell ran) is retried; a notebook's own error is not."
    import papermill
    real, calls = papermill.execute_notebook, []
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1: raise RuntimeError("Kernel died before replying to kernel_info")
        return real(*a, **k)
    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    r = ex.run_experiment("tiny", progress=False)
    assert r.ok and len(calls) == 2 and r.metrics["y"] == 3.0
    calls.clear()
    r = ex.run_experiment("tiny", {"fail_at": 2}, progress=False, raise_on_failure=False)
    assert r.status == "failed" and "boom at x=2" in r.error and len(calls) == 2   # the first start died; the cell error is final
    def dead(*a, **k):
        calls.append(1)
        raise RuntimeError("Kernel died before replying to kernel_info")
    monkeypatch.setattr(papermill, "execute_notebook", dead)
    calls.clear()
    r = ex.run_experiment("tiny", progress=False, raise_on_failure=False)
    assert r.status == "failed" and "Kernel died" in r.error and len(calls) == 3


def test_experiment_failed_crosses_a_process_boundary():
    "A run failing in a worker process (raise_on_failure=True) reaches the parent as itself, not as a broken pool."
    import pickle
    from pathlib import Path as P
    from tradingrl_nb.experiments import ExperimentFailed, RunResult
    r = RunResult("train_agent", P("/tmp/x"), P("/tmp/x/train_agent.ipynb"), None, {"seed": 1}, {}, "failed", 1.5, "boom")
    e = pickle.loads(pickle.dumps(ExperimentFailed("train_agent failed: boom", r)))
    assert str(e) == "train_agent failed: boom" and e.result == r


def test_overwrite_replaces_an_older_tradingrls_walk_forward_with_its_sub_runs(tmp_path):
    """A folder of a tradingrl from before the run marker whose notebook started sub-runs (walk_forward's runs/NAME, each
    with its own run.json) can be replaced with --overwrite; a file or a sub-folder no run wrote still blocks it."""
    out = tmp_path / "walk_forward"
    (out / "figures").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps(dict(experiment="walk_forward", started="2026-12-02T20:34:00", pid=1, host="h")))
    for name in ("metrics.json", "params.json", "walk_forward.ipynb", "figures/walk_forward_sharpe.png"): (out / name).write_text("x")
    for run in ("2008-seed0", "2013-seed1"):
        (out / "runs" / run).mkdir(parents=True)
        for name in ("run.json", "metrics.json", "returns.csv"): (out / "runs" / run / name).write_text("{}")
    assert rundir.reuse_problem(out, overwrite=True) is None
    (out / "runs" / "mine").mkdir()                            # a folder without a run.json: not a sub-run
    assert "runs/mine/" in rundir.reuse_problem(out, overwrite=True)
    (out / "runs" / "mine").rmdir()
    rundir.clear_run_dir(out)
    assert not (out / "runs").exists() and list(out.iterdir()) == []
