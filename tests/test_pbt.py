"""Population-based training on one machine: checkpoints, selection, exploit/explore, runner (tradingrl_nb.pbt)."""
import functools, json, math, os, re

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors import safe_open

from tradingrl_nb import pbt
from tradingrl_nb.pbt import Hyperparam, PBTScheduler, load_checkpoint, load_exploit, save_checkpoint
from tradingrl_nb.testing import ToyMember
from tradingrl_nb.pbt_runner import run_population
from tradingrl_nb import fileio

MUT = {"learning_rate": Hyperparam(1e-4, 5e-2, log=True), "vgs_alpha": Hyperparam(0.0, 1.0)}


def trained(member_id, steps, **kw):
    m = ToyMember(member_id, **kw)
    m.train(steps)
    return m


def scheduler_with(members, fitnesses, **kw):
    s = PBTScheduler(MUT, seed=kw.pop("seed", 0), **kw)
    for i, (m, f) in enumerate(zip(members, fitnesses)):
        s.add_member(i, dict(m.hyperparams))
        s.report(i, f, step=1, parameters=m.get_parameters())
    return s


# --- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_roundtrip_is_exact_and_pickle_free(tmp_path):
    m = trained(0, 5)
    tree = {**m.get_parameters(), "misc": {"arr": np.arange(6.0).reshape(2, 3), "nan": float("nan"), "t": (1, "a", None),
                                           3: [True, 2.5]}}
    path = save_checkpoint(tmp_path / "c.safetensors", tree, {"note": "x", "inf": float("inf")})
    got, meta = load_checkpoint(path)
    assert meta == {"note": "x", "inf": math.inf}          # one JSON rule (fileio): infinity comes back
    for k, v in tree["policy"].items(): assert torch.equal(got["policy"][k], v)
    opt = tree["policy.optimizer"]
    assert got["policy.optimizer"]["param_groups"] == opt["param_groups"]            # tuples, ints survive
    for pid, st_ in opt["state"].items():
        for k, v in st_.items(): assert torch.equal(got["policy.optimizer"]["state"][pid][k], v)
    assert np.array_equal(got["misc"]["arr"], tree["misc"]["arr"]) and math.isnan(got["misc"]["nan"])
    assert got["misc"]["t"] == (1, "a", None) and got["misc"][3] == [True, 2.5]
    with safe_open(str(path), framework="pt") as f:                                      # a plain safetensors file
        assert f.metadata()["format"] == pbt.CHECKPOINT_FORMAT
    with open(path, "rb") as f: assert b"\x80\x04\x95" not in f.read()                   # no pickle protocol-4 frame


def test_checkpoint_refuses_objects_and_writes_atomically(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(3)})
    with pytest.raises(ValueError, match="vgs/obj"):
        save_checkpoint(path, {"w": torch.zeros(3), "vgs": {"obj": object()}})
    def boom(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(OSError): save_checkpoint(path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)[0]["w"], torch.ones(3))                     # old file intact
    assert os.listdir(tmp_path) == ["c.safetensors"]                                     # no temporary left over
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception): load_checkpoint(tmp_path / "bad.safetensors")


# --- hyperparameters and selection ----------------------------------------------------------------
@given(st.floats(1e-4, 5e-2), st.integers(0, 2**31 - 1), st.floats(0, 1))
@settings(max_examples=60, deadline=None)
def test_explore_stays_in_range_and_perturbs_by_factors(value, seed, p_resample):
    h, rng = MUT["learning_rate"], np.random.default_rng(seed)
    new, op = h.explore(value, rng, (0.8, 1.2), p_resample)
    assert h.low <= new <= h.high
    if op != "resample":
        f = float(op[1:])
        assert f in (0.8, 1.2) and math.isclose(new, min(max(value * f, h.low), h.high))


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=12, unique=True), st.sampled_from([0.1, 0.25, 0.5]),
       st.sampled_from(["max", "min"]))
@settings(max_examples=40, deadline=None)
def test_truncation_selection(fitnesses, q, mode):
    n = len(fitnesses)
    members = [ToyMember(i) for i in range(n)]
    s = scheduler_with(members, fitnesses, quantile_fraction=q, mode=mode, resample_probability=0.0)
    k = min(math.ceil(n * q), n // 2)
    order = np.argsort(fitnesses if mode == "max" else [-f for f in fitnesses])
    bottom, top = set(order[:k].tolist()), set(order[n - k:].tolist())
    for i in range(n):
        params, hp, fmt = s.exploit_and_explore(i)
        if i in bottom:
            donor = s.records[i].parent
            assert donor in top and params is not None and fmt is not None
            assert torch.equal(params["policy"]["head.weight"], members[donor].net.head.weight)
        else:
            assert params is None and fmt is None and hp == members[i].hyperparams
    h = s.history_frame()
    assert sorted(h["member_id"]) == sorted(bottom) and set(h["source_id"]) <= top and (h["kind"] == "exploit").all()


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="quantile_fraction"): PBTScheduler(MUT, quantile_fraction=0.7)
    with pytest.raises(ValueError, match="optimizer_exploit_strategy"): PBTScheduler(MUT, optimizer_exploit_strategy="keep")
    with pytest.raises(ValueError, match="low"): Hyperparam(1.0, 0.5)
    with pytest.raises(ValueError, match="hyperparameters missing"): PBTScheduler(MUT).add_member(0, {"learning_rate": 1e-3})


# --- exploit copies what belongs to the weights --------------------------------------------------------
@pytest.mark.parametrize("strategy", ["copy", "reset"])
def test_exploit_copies_vgs_normalization_and_optimizer_per_strategy(strategy):
    donor, target = trained(1, 30), trained(0, 3)
    s = scheduler_with([target, donor], [0.0, 1.0], optimizer_exploit_strategy=strategy)
    params, hp, fmt = s.exploit_and_explore(0)
    load_exploit(target, params, hp, reset_optimizer=strategy == "reset")
    dv, tv = donor.vgs.state_dict(), target.vgs.state_dict()
    assert dv["step_count"] == tv["step_count"] == 30
    assert all(torch.equal(a, b) for a, b in zip(dv["mean"] + dv["sq"], tv["mean"] + tv["sq"]))
    assert all(torch.equal(donor.target_stats[k], target.target_stats[k]) for k in donor.target_stats)
    live = list(target.net.parameters())
    assert all(a is b for a, b in zip(target.vgs._params, live))                     # VGS relinked to live tensors
    assert all(p is q for p, q in zip(target.optimizer.param_groups[0]["params"], live))  # optimizer too
    if strategy == "copy":
        assert fmt.endswith("with-optimizer")
        ds, ts = donor.optimizer.state_dict()["state"], target.optimizer.state_dict()["state"]
        assert all(torch.equal(ds[i]["exp_avg_sq"], ts[i]["exp_avg_sq"]) and int(ts[i]["step"]) == 30 for i in ds)
    else:
        assert fmt.endswith("without-optimizer") and target.optimizer.state_dict()["state"] == {}
    w0 = [p.detach().clone() for p in live]
    target.train(1)                                                                    # and training moves the live weights
    assert any(not torch.equal(a, b) for a, b in zip(w0, target.net.parameters()))
    if strategy == "reset": assert int(target.optimizer.state_dict()["state"][0]["step"]) == 1


@pytest.mark.parametrize("strategy", ["copy", "reset"])
def test_new_hyperparameters_are_live_after_exploit(strategy):
    donor, target = trained(1, 20), trained(0, 2)
    donor.apply_hyperparams({"learning_rate": 1e-2, "vgs_alpha": 0.5})
    donor.train(1)  # its optimizer state carries lr=1e-2
    s = PBTScheduler(MUT, seed=3, resample_probability=0.0, optimizer_exploit_strategy=strategy)
    for i, m in enumerate([target, donor]):
        s.add_member(i, dict(m.hyperparams))
        s.report(i, float(i), 1, m.get_parameters())
    assert donor.get_parameters()["policy.optimizer"]["param_groups"][0]["lr"] == 1e-2
    params, hp, _ = s.exploit_and_explore(0)
    assert any(math.isclose(hp["learning_rate"], 1e-2 * f) for f in (0.8, 1.2))
    load_exploit(target, params, hp, reset_optimizer=strategy == "reset")
    assert target.optimizer.param_groups[0]["lr"] == hp["learning_rate"] != 1e-2      # not the checkpoint's lr
    assert target.vgs.alpha == hp["vgs_alpha"] and target.live_hyperparams() == hp
    w0 = [p.detach().clone() for p in target.net.parameters()]
    target.train(1)
    step = max(float((a - b.detach()).abs().max()) for a, b in zip(w0, target.net.parameters()))
    if strategy == "reset":       # Adam's first step moves weights by about lr: the new lr, not the donor's
        assert math.isclose(step, hp["learning_rate"], rel_tol=0.02)
    assert step < 1e-2 * 1.2 * 1.05


def test_lstm_state_is_reset_by_load_exploit_and_matters():
    donor, target = trained(1, 40), trained(0, 40)
    x = target.val_x[:48].reshape(2, 24)
    fresh, _ = donor.predict(x, state=tuple(torch.zeros_like(s)[:, :2] for s in donor.lstm_states))
    stale_state = tuple(s[:, :2].clone() for s in target.lstm_states)
    target.net.load_state_dict(donor.net.state_dict())                                # a weight load without reset
    stale, _ = target.predict(x, state=stale_state)
    load_exploit(target, donor.get_parameters(), dict(target.hyperparams))
    assert all(float(s.abs().max()) == 0 for s in target.lstm_states)
    after, _ = target.predict(x, state=tuple(s[:, :2] for s in target.lstm_states))
    assert torch.allclose(after, fresh) and not torch.allclose(stale, fresh, atol=1e-3)
    target.reset_lstm_states_to_initial()
    assert all(float(s.abs().max()) == 0 for s in target.lstm_states)
    m = ToyMember(2)
    assert m.lstm_states is None
    m.reset_lstm_states_to_initial()
    assert m.lstm_states is None



class StatefulLoadMember(ToyMember):
    "A third-party member whose `set_parameters` keeps (or restores) a recurrent state instead of resetting it."
    def set_parameters(self, parameters, reset_optimizer=False):
        keep, calls = self.lstm_states, list(getattr(self, "calls", []))
        super().set_parameters(parameters, reset_optimizer)             # (ToyMember's own reset is undone below)
        self.lstm_states = None if keep is None else tuple(torch.ones_like(s) for s in keep)
        self.calls = [*calls, "set_parameters"]

    def reset_lstm_states_to_initial(self):
        super().reset_lstm_states_to_initial()
        self.calls = [*getattr(self, "calls", []), "reset"]

    def apply_hyperparams(self, hyperparams):
        super().apply_hyperparams(hyperparams)
        self.calls = [*getattr(self, "calls", []), "apply_hyperparams"]


@pytest.mark.parametrize("keep_clock", [False, True])
def test_load_exploit_resets_the_recurrent_state_whatever_set_parameters_does(keep_clock):
    donor, target = trained(1, 10), StatefulLoadMember(0)
    target.train(10)
    target.calls = []
    load_exploit(target, donor.get_parameters(), dict(target.hyperparams), keep_clock=keep_clock)
    assert target.calls == ["set_parameters", "reset", "apply_hyperparams"]      # the reset comes after the load
    assert target.lstm_states is not None and all(float(s.abs().max()) == 0 for s in target.lstm_states)
    target.calls = []
    load_exploit(target, None, dict(target.hyperparams))                           # nothing loaded: nothing reset
    assert target.calls == ["apply_hyperparams"]


@pytest.mark.parametrize("bad, named", [({"learning_rate": -1e-3}, "learning_rate=-0.001"), ({"learning_rate": 0.0}, "learning_rate=0.0"),
                                        ({"vgs_alpha": -0.5}, "vgs_alpha=-0.5"), ({"learning_rate": float("nan")}, "learning_rate=nan"),
                                        ({"learning_rate": 1e-2, "vgs_alpha": -0.5}, "vgs_alpha=-0.5")])
def test_toy_member_refuses_out_of_range_hyperparameters_and_keeps_its_values(bad, named):
    m = ToyMember(0)
    before, hp = m.live_hyperparams(), dict(m.hyperparams)
    with pytest.raises(ValueError, match=re.escape(named)):
        m.apply_hyperparams(bad)
    assert m.live_hyperparams() == before and m.hyperparams == hp

# --- ready checks: nobody waits forever ----------------------------------------------------------
def test_slow_member_does_not_block_the_others():
    ms = [ToyMember(i) for i in range(3)]
    s = PBTScheduler(MUT, seed=0, min_ready_members=3, ready_check_max_wait=3, perturbation_interval=1)
    for i, m in enumerate(ms): s.add_member(i, dict(m.hyperparams))
    s.report(2, 5.0, step=1, parameters=ms[2].get_parameters())     # member 2 reports once, then is slow
    outcomes = []
    for step in range(3, 13):
        for i in (0, 1): s.report(i, float(i), step=step, parameters=ms[i].get_parameters())
        outcomes.append(s.exploit_and_explore(0))
        if s.history: break
    assert len(outcomes) == 3                                         # waited exactly ready_check_max_wait checks
    assert all(p is None and hp == ms[0].hyperparams for p, hp, _ in outcomes[:2])
    assert outcomes[-1][0] is not None and s.history[-1]["source_id"] in (1, 2)     # then went ahead with what it had


def test_failed_members_do_not_block_and_a_lone_member_explores():
    ms = [ToyMember(i) for i in range(3)]
    s = PBTScheduler(MUT, seed=0, min_ready_members=2, ready_check_max_wait=2)
    for i, m in enumerate(ms):
        s.add_member(i, dict(m.hyperparams))
        s.report(i, float(i), 1, m.get_parameters())
    s.mark_failed(1, "boom")
    s.mark_failed(2, "boom")
    r1 = s.exploit_and_explore(0)
    s.report(0, 0.0, 2)
    r2 = s.exploit_and_explore(0)
    assert r1[0] is None and r1[1] == ms[0].hyperparams
    assert r2[0] is None and r2[1] != ms[0].hyperparams and s.history[-1]["kind"] == "explore"
    params, hp, _ = s.replace_failed(1)                               # revived from the only alive member
    assert s.records[1].status == "alive" and s.records[1].parent == 0 and params is not None


# --- the runner ------------------------------------------------------------------------------------
def factory(member_id):
    return ToyMember(member_id, fail_at_step=12 if member_id == 1 else None)


class AlwaysFails(ToyMember):
    def train(self, n_steps): raise ValueError("this member is broken")


def test_run_population_replaces_a_failed_member(tmp_path, caplog):
    s = PBTScheduler(MUT, seed=1, perturbation_interval=5)
    res = run_population(factory, s, n_members=4, n_rounds=4, steps_per_round=5, run_dir=tmp_path, progress=False)
    assert len(res.failures) == 1 and res.failures[0]["member_id"] == 1
    assert "simulated failure" in res.failures[0]["traceback"] and "Traceback" in res.failures[0]["traceback"]
    assert "simulated failure" in caplog.text                                           # logged with its traceback
    h = res.history
    rep = h[h.kind == "replace_failed"]
    assert list(rep.member_id) == [1] and rep.source_id.iloc[0] != 1
    assert s.records[1].status == "alive"
    log = res.log
    assert log[(log.member_id == 1) & (log["round"] > rep["round"].iloc[0])].fitness.notna().all()
    assert set(h.columns) >= {"member_id", "source_id", "old_learning_rate", "new_learning_rate", "old_hyperparams"}
    assert (h[h.kind == "exploit"].new_learning_rate != h[h.kind == "exploit"].old_learning_rate).all()
    assert json.loads((tmp_path / "population.json").read_text())["format"] == pbt.CHECKPOINT_FORMAT
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(files) == 4 and all(f.endswith(".safetensors") for f in files)           # pruned, one per member


def test_member_that_always_fails_is_dropped_and_the_population_goes_on(tmp_path):
    fac = lambda i: AlwaysFails(i) if i == 2 else ToyMember(i)
    s = PBTScheduler(MUT, seed=0, perturbation_interval=3)
    res = run_population(fac, s, n_members=3, n_rounds=4, steps_per_round=3, run_dir=tmp_path, max_failures=1, progress=False)
    assert s.records[2].status == "dropped" and len(res.failures) == 2
    assert res.log[res.log.member_id == 0].fitness.notna().sum() == 4 and res.best_member_id in (0, 1)


class Crash(BaseException):
    "Not an Exception: stands for the process dying."


def test_resume_after_crash(tmp_path):
    s_full = PBTScheduler(MUT, seed=7, perturbation_interval=4)
    full = run_population(ToyMember, s_full, n_members=4, n_rounds=4, steps_per_round=4, run_dir=tmp_path / "a", progress=False)

    loaded = {}
    class Crashy(ToyMember):
        def train(self, n):
            if self.num_timesteps >= 8 and self.member_id == 2: raise Crash()
            return super().train(n)
    class Probe(ToyMember):
        def set_parameters(self, parameters, reset_optimizer=False):
            loaded.setdefault(self.member_id, {k: v.clone() for k, v in parameters["policy"].items()})
            super().set_parameters(parameters, reset_optimizer)
    s1 = PBTScheduler(MUT, seed=7, perturbation_interval=4)
    with pytest.raises(Crash):
        run_population(Crashy, s1, n_members=4, n_rounds=4, steps_per_round=4, run_dir=tmp_path / "b", progress=False)
    state = json.loads((tmp_path / "b" / "population.json").read_text())
    assert state["rounds_done"] == {str(i): 2 for i in range(4)}
    saved = {int(k): load_checkpoint(r["checkpoint"])[0]["policy"] for k, r in state["scheduler"]["records"].items()}
    s2 = PBTScheduler(MUT, seed=123, perturbation_interval=4)     # the saved random state wins over this seed
    res = run_population(Probe, s2, n_members=4, n_rounds=4, steps_per_round=4, run_dir=tmp_path / "b", progress=False)
    for i in range(4):                                            # members resumed from the pre-crash checkpoints
        assert all(torch.equal(loaded[i][k], saved[i][k]) for k in saved[i])
    log = res.log
    assert sorted(log.groupby("round").size().to_dict().items()) == [(r, 4) for r in range(4)]
    fl = full.log
    pd_equal = lambda a, b: a.reset_index(drop=True).equals(b.reset_index(drop=True))
    cols = ["round", "member_id", "step", "fitness"]
    assert pd_equal(log[log["round"] < 2][cols], fl[fl["round"] < 2][cols])            # history before the crash kept
    assert full.history[full.history["round"] < 2][["member_id", "source_id"]].equals(
        res.history[res.history["round"] < 2][["member_id", "source_id"]])
    assert (log[log["round"] >= 2].fitness.notna()).all()


@pytest.mark.slow
def test_worker_processes_with_a_slow_and_a_failing_member(tmp_path):
    s = PBTScheduler(MUT, seed=0, perturbation_interval=4, min_ready_members=3, ready_check_max_wait=2)
    res = run_population(functools.partial(pbt_worker_factory, flag=str(tmp_path / "failed_once")), s, n_members=3, n_rounds=4, steps_per_round=4, run_dir=tmp_path,
                         n_workers=2, progress=False)
    log = res.log
    done = log[log.fitness.notna()].groupby("member_id").size()
    assert (done >= 4).all()                                     # everyone finished its rounds
    for mid in (1, 2):                                           # steps keep counting across rebuilds in workers
        steps = list(log[(log.member_id == mid) & log.fitness.notna()].step)
        assert len(steps) == 4 and all(b > a for a, b in zip(steps, steps[1:])) and steps[-1] >= 16
    assert len(res.failures) == 1 and "simulated failure" in res.failures[0]["traceback"]
    assert (res.history.kind == "replace_failed").sum() == 1
    assert len(res.history) >= 2                                  # fast members perturbed without waiting for the slow one


def pbt_worker_factory(member_id, flag):
    if member_id == 0: return ToyMember(0, fail_at_step=8, fail_flag=flag)    # fails once, whichever process runs it
    return ToyMember(member_id, sleep=0.05 if member_id == 2 else 0.0)


def test_local_scheduler_imports_and_runs_without_ray(tmp_path):
    import subprocess, sys, textwrap
    code = textwrap.dedent(f"""
        import sys; sys.modules['ray'] = None          # make `import ray` fail
        import torch; torch.set_num_threads(1)
        from tradingrl_nb.pbt import PBTScheduler
        from tradingrl_nb.testing import ToyMember
        from tradingrl_nb.pbt_runner import run_population
        from tradingrl_nb.pbt_ray import run_ray_tune, ray_available
        assert not ray_available()
        res = run_population(ToyMember, PBTScheduler({{'learning_rate': (1e-4, 1e-2)}}, seed=0), 2, 2, 2,
                             run_dir={str(tmp_path)!r}, progress=False)
        assert len(res.log) == 4
        try: run_ray_tune(ToyMember)
        except ImportError as e: assert 'tradingrl_nb[ray]' in str(e); print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


@pytest.mark.slow
def test_resume_after_crash_with_worker_processes(tmp_path):
    n_done = []
    def crash_after_three(rnd, scheduler):
        n_done.append(rnd)
        if len(n_done) == 3: raise Crash()
    s1 = PBTScheduler(MUT, seed=0, perturbation_interval=3)
    with pytest.raises(Crash):
        run_population(ToyMember, s1, n_members=3, n_rounds=3, steps_per_round=3, run_dir=tmp_path, n_workers=2,
                       progress=False, callback=crash_after_three)
    saved = json.loads((tmp_path / "population.json").read_text())
    assert sum(saved["rounds_done"].values()) == 3                 # three intervals were finished and saved
    assert all(os.path.exists(r["checkpoint"]) for r in saved["scheduler"]["records"].values() if r["checkpoint"])
    s2 = PBTScheduler(MUT, seed=0, perturbation_interval=3)
    res = run_population(ToyMember, s2, n_members=3, n_rounds=3, steps_per_round=3, run_dir=tmp_path, n_workers=2,
                         progress=False)
    log = res.log
    assert log.groupby("member_id").size().to_dict() == {0: 3, 1: 3, 2: 3}   # each interval reported exactly once
    state = json.loads((tmp_path / "population.json").read_text())
    assert state["rounds_done"] == {"0": 3, "1": 3, "2": 3}


# --- runner gaps (issue 12.10) ----------------------------------------------------------------------
def test_sequential_runner_stores_a_revived_members_new_checkpoint(tmp_path):
    "A failed member revived from a donor: its stored checkpoint is the donor's state right away (as in the worker runner)."
    seen = []
    def check(rnd, s):
        rep = [h for h in s.history if h["kind"] == "replace_failed" and h["round"] == rnd]
        if not rep: return
        donor = rep[0]["source_id"]
        assert s.records[1].checkpoint is not None, "revived member has no stored checkpoint"
        mine, theirs = s.load(1), s.load(donor)
        assert all(torch.equal(mine["policy"][k], theirs["policy"][k]) for k in theirs["policy"])
        seen.append(rnd)
    s = PBTScheduler(MUT, seed=1, perturbation_interval=5)
    run_population(factory, s, n_members=4, n_rounds=4, steps_per_round=5, run_dir=tmp_path, progress=False, callback=check)
    assert seen == [2]                                           # member 1 failed at step 12, in round 2


def pbt_hang_factory(member_id):
    "Member 2 hangs (one step takes an hour); the others train normally."
    return ToyMember(member_id, sleep=3600.0 if member_id == 2 else 0.0)


@pytest.mark.slow
def test_member_timeout_kills_a_hung_worker_and_marks_the_member_failed(tmp_path, caplog):
    s = PBTScheduler(MUT, seed=0, perturbation_interval=3)
    res = run_population(pbt_hang_factory, s, n_members=3, n_rounds=3, steps_per_round=3, run_dir=tmp_path, n_workers=2,
                         member_timeout=30.0, max_failures=0, progress=False)
    assert len(res.failures) == 1 and res.failures[0]["member_id"] == 2
    assert "member_timeout" in res.failures[0]["error"] and "member_timeout" in caplog.text   # logged like other failures
    assert s.records[2].status == "dropped"
    log = res.log
    for mid in (0, 1): assert log[(log.member_id == mid) & log.fitness.notna()].shape[0] == 3   # the others finished


def test_member_timeout_is_validated():
    with pytest.raises(ValueError, match="member_timeout"):
        run_population(ToyMember, PBTScheduler(MUT), 2, 1, 1, member_timeout=0, progress=False)
    with pytest.raises(ValueError, match="n_workers"):
        run_population(ToyMember, PBTScheduler(MUT), 2, 1, 1, member_timeout=5.0, progress=False)


class DiesOnce(ToyMember):
    "Kills its own process once (at step 3), as a segfault or the OOM killer would."
    def __init__(self, member_id, flag):
        super().__init__(member_id)
        self.flag = flag
    def train(self, n_steps):
        if self.num_timesteps >= 3 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(3)
        return super().train(n_steps)


def pbt_dying_factory(member_id, flag):
    return DiesOnce(member_id, flag) if member_id == 1 else ToyMember(member_id)


@pytest.mark.slow
def test_a_worker_process_that_dies_fails_its_member_not_the_run(tmp_path):
    s = PBTScheduler(MUT, seed=0, perturbation_interval=3)
    res = run_population(functools.partial(pbt_dying_factory, flag=str(tmp_path / "died")), s, n_members=3, n_rounds=3,
                         steps_per_round=3, run_dir=tmp_path, n_workers=2, progress=False)
    assert len(res.failures) == 1 and res.failures[0]["member_id"] == 1 and "died" in res.failures[0]["error"]
    assert s.records[1].status == "alive"                            # revived from the best member, then went on
    log = res.log
    assert (log[log.fitness.notna()].groupby("member_id").size() == 3).all()
