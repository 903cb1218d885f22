"""Live progress and TensorBoard logs of a run (issue 16, items 2 and 6): TrainingLog writes them under the runner,
and `tradingrl run` shows the experiment's own progress while it executes."""
import json, os, subprocess
from pathlib import Path

import pytest

from tradingrl_nb import record
from tradingrl_nb.progress import ProgressFile, follow_progress, format_progress, read_progress
from test_cli import CMD
from tradingrl_nb.testing import make_notebook


def tiny_model(cls=None, **kw):
    import torch
    from tradingrl_nb.data import synthetic_market
    from tradingrl_nb.vec_env import TradingVecEnv
    from tradingrl_nb.ppo import DistributionalPPO
    torch.set_num_threads(1)
    env = TradingVecEnv(synthetic_market(400, seed=1), n_envs=2, seed=0, episode_length=64, window=8)
    return (cls or DistributionalPPO)("MlpLstmPolicy", env, n_steps=32, batch_size=64, n_epochs=1, sequence_length=16,
                                      seed=0, device="cpu", policy_kwargs=dict(lstm_hidden_size=8, n_quantiles=8), **kw)


def tb_scalars(folder: Path) -> dict[str, list]:
    "tag -> [(step, value)] of the TensorBoard event files under `folder`."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.fixture
def run_context():
    "Attach a run context (what `tradingrl run` injects) for one test; detach after it."
    from tradingrl_nb.progress import attach_run
    yield attach_run
    attach_run(None)


def test_training_log_writes_progress_and_tensorboard_under_the_runner(tmp_path, run_context):
    run_context(dict(progress=str(tmp_path / "p.json"), total=192, tensorboard=str(tmp_path / "tb")))
    model = tiny_model()
    log = record.TrainingLog(model, name="agent")
    log.learn(128)
    log.record_validation(sharpe=0.25, total_return=-0.5)
    log.learn(64)
    p = read_progress(tmp_path / "p.json")
    assert p["steps"] == 192 and p["total"] == 192 and p["metrics"] == {"val_sharpe": 0.25, "val_total_return": -0.5}
    assert p["steps_per_s"] > 0 and p["eta_s"] == 0
    assert format_progress(p).startswith("steps 192/192 (100.0%) | ") and "val_sharpe 0.25" in format_progress(p)
    scalars = tb_scalars(tmp_path / "tb" / "agent")
    for prefix in ("train/", "vgs/", "upgd/", "critics/", "rollout/"):
        assert any(t.startswith(prefix) for t in scalars), (prefix, sorted(scalars))
    frame = log.frame()
    assert [s for s, _ in scalars["train/value_loss"]] == list(frame.index) == [64, 128, 192]
    assert [v for _, v in scalars["train/value_loss"]] == pytest.approx(list(frame["train/value_loss"]), rel=1e-6)
    assert scalars["val/sharpe"] == [(128, 0.25)]


def test_sappo_metrics_reach_tensorboard(tmp_path):
    from tradingrl_nb.ppo import DistributionalPPO
    model = tiny_model(DistributionalPPO, sappo=dict(eps=0.05, kappa=0.1, steps=1))
    log = record.TrainingLog(model, name="sa", tensorboard=tmp_path)
    log.learn(128)
    tags = set(tb_scalars(tmp_path / "sa"))
    assert "sappo/eps" in tags and tags == set(log.frame().columns)   # every logged value, SA-PPO's included


def test_no_files_outside_a_run(tmp_path, monkeypatch, run_context):
    run_context(None)
    monkeypatch.chdir(tmp_path)
    log = record.TrainingLog(tiny_model())
    log.learn(64)
    assert log.progress is None and log.tensorboard is None and list(tmp_path.iterdir()) == []


def test_follower_prints_changes_and_the_final_state(tmp_path):
    import io, time
    path, out = tmp_path / "p.json", io.StringIO()
    w = ProgressFile(path, total=100, min_interval=0)
    with follow_progress(path, stream=out, interval=0, poll=0.02) as f:
        for s in (0, 50):
            w.update(s)
            time.sleep(0.2)
        w.update(100, val_sharpe=1.5)
    assert [l.split(" (")[0] for l in f.lines] == ["steps 0/100", "steps 50/100", "steps 100/100"]
    assert f.lines[-1].endswith("val_sharpe 1.5") and out.getvalue().count("progress: steps") == 3


TRAINING = ("from tradingrl_nb.record import TrainingLog, save_metrics\n"
            "from tradingrl_nb.progress import attach_run\nattach_run(run_context)\n"
            "import torch\nfrom tradingrl_nb.data import synthetic_market\nfrom tradingrl_nb.vec_env import TradingVecEnv\n"
            "from tradingrl_nb.ppo import DistributionalPPO\ntorch.set_num_threads(1)\n"
            "env = TradingVecEnv(synthetic_market(400, seed=1), n_envs=2, seed=0, episode_length=64, window=8)\n"
            "model = DistributionalPPO('MlpLstmPolicy', env, n_steps=32, batch_size=64, n_epochs=1, sequence_length=16, seed=0,\n"
            "                          device='cpu', policy_kwargs=dict(lstm_hidden_size=8, n_quantiles=8))\n"
            "log = TrainingLog(model)\n"
            "while model.num_timesteps < total_timesteps:\n"
            "    log.learn(64)\n"
            "    log.record_validation(sharpe=model.num_timesteps / 1000)\n"
            "save_metrics({'steps': model.num_timesteps}, output_dir)")


@pytest.mark.slow
def test_run_shows_live_progress_and_writes_tensorboard(tmp_path):
    make_notebook(tmp_path / "exps" / "trainy.ipynb", "total_timesteps = 128  # in (0, inf)\noutput_dir = None\nrun_context = None\n", TRAINING)
    env = {**os.environ, "TRADINGRL_EXPERIMENTS_DIR": str(tmp_path / "exps"), "TRADINGRL_PROGRESS_INTERVAL": "0"}
    out = tmp_path / "run"
    r = subprocess.run([*CMD, "run", "trainy", "-p", "total_timesteps", "192", "--output-dir", str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.replace("\r", "\n").splitlines() if l.startswith("progress: ")]
    assert lines and lines[-1].startswith("progress: steps 192/192 (100.0%)") and "val_sharpe 0.192" in lines[-1]
    assert any("steps/s | ETA" in l for l in lines)
    assert {"train/value_loss", "val/sharpe"} <= set(tb_scalars(next((out / "tensorboard").iterdir())))


# ---- an experiment that starts other runs relays their summed progress (walk_forward under `make run`) -----------
def _child(folder: Path, steps: int, total: int, status: str | None) -> Path:
    folder.mkdir(parents=True)
    if steps is not None:
        w = ProgressFile(folder / ".progress.json", total=total, min_interval=0)
        w.update(steps, force=True)
    if status is not None: (folder / "run.json").write_text(json.dumps({"status": status}))
    return folder


def test_relay_progress_writes_the_sum_of_the_runs_it_started(tmp_path, run_context):
    from tradingrl_nb.progress import relay_progress
    dirs = [_child(tmp_path / "a", 300, 1000, "running"),
            _child(tmp_path / "b", 600, 1000, "ok"),            # stopped early: counts as its whole total
            tmp_path / "c"]                                    # not started yet
    run_context(dict(progress=str(tmp_path / "parent.json")))
    with relay_progress(dirs, total=3000, interval=0.05) as r:
        r.poll()
        p = read_progress(tmp_path / "parent.json")
        assert (p["steps"], p["total"], p["metrics"]["runs_done"]) == (1300, 3000, 1)
        _child(tmp_path / "c", 1000, 1000, "failed")
    p = read_progress(tmp_path / "parent.json")                # the last state is written on exit
    assert (p["steps"], p["metrics"]["runs_done"]) == (2300, 2)
    assert "runs_done 2" in format_progress(p)


def test_relay_progress_outside_a_run_does_nothing(tmp_path, run_context):
    from tradingrl_nb.progress import relay_progress
    run_context(None)
    with relay_progress([_child(tmp_path / "a", 5, 10, "running")], interval=0.01) as r:
        assert r.poll() is None
    assert list(tmp_path.iterdir()) == [tmp_path / "a"]


def test_relay_progress_writes_only_when_the_sum_changes(tmp_path, run_context):
    from tradingrl_nb.progress import relay_progress
    run_context(dict(progress=str(tmp_path / "parent.json")))
    r = relay_progress([_child(tmp_path / "a", 5, 10, "running")])
    assert r.poll(force=False) is not None and r.poll(force=False) is None      # unchanged: no new line to print
    ProgressFile(tmp_path / "a" / ".progress.json", total=10, min_interval=0).update(7, force=True)
    assert r.poll(force=False)["steps"] == 7


def test_run_context_is_checked():
    from tradingrl_nb.progress import RunContext
    assert RunContext.from_parameter(None) == RunContext()
    assert RunContext.from_parameter({"progress": "p.json", "total": 5}) == RunContext("p.json", 5, None)
    for bad in ({"progres": "p.json"}, {"total": "5"}, {"total": True}, "p.json"):
        with pytest.raises(ValueError, match="run_context"): RunContext.from_parameter(bad)
