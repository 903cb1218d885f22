"""The `tradingrl` console script, run as a user runs it (a subprocess): success and failure paths."""
import json, os, signal, subprocess, sys
from pathlib import Path

import pytest

from tradingrl_nb.data import load_market_data, walk_forward_splits
from tradingrl_nb.market import prepare_market
from tradingrl_nb.testing import TINY_CELLS, TINY_PARAMS, make_notebook

_SCRIPT = Path(sys.executable).parent / "tradingrl"
CMD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "import sys; from tradingrl_nb.cli import main; sys.exit(main())"]


@pytest.fixture
def env(tmp_path):
    "Environment with a fast `tiny` experiment on the search path and runs going to tmp_path/runs."
    make_notebook(tmp_path / "exps" / "tiny.ipynb", TINY_PARAMS, *TINY_CELLS)
    return {**os.environ, "TRADINGRL_EXPERIMENTS_DIR": str(tmp_path / "exps"), "TRADINGRL_RUNS_DIR": str(tmp_path / "runs")}


def tradingrl(*args, env, cwd=None):
    return subprocess.run([*CMD, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_list_shows_experiments_and_parameters(env):
    r = tradingrl("list", env=env)
    assert r.returncode == 0, r.stderr
    assert "data_summary" in r.stdout and "tiny" in r.stdout
    assert "4 parameters" in next(l for l in r.stdout.splitlines() if l.startswith("tiny "))   # output_dir not counted
    r = tradingrl("list", "tiny", env=env)
    line = next(l for l in r.stdout.splitlines() if l.strip().startswith("scale"))
    assert "float" in line and "1.5" in line
    assert "a number" in next(l for l in r.stdout.splitlines() if l.strip().startswith("x "))
    assert "output_dir" not in r.stdout  # set by the runner, not by the user


def test_list_shows_paths_relative_to_the_working_directory(env, tmp_path):
    "A notebook under the working directory is shown by its relative path (stored outputs and logs carry no machine paths)."
    r = tradingrl("list", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("tiny "))
    assert f"({os.path.join('exps', 'tiny.ipynb')})" in line and str(tmp_path) not in line
    r = tradingrl("list", env=env, cwd=tmp_path / "exps")
    assert "(tiny.ipynb)" in next(l for l in r.stdout.splitlines() if l.startswith("tiny "))


def test_run_success(env, tmp_path):
    r = tradingrl("run", "tiny", "-p", "x", "4", "-p", "label", "q", env=env)
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("-tiny")
    d = runs[0]
    for f in ("tiny.ipynb", "tiny.html", "params.json", "metrics.json", "figures/line.png"): assert (d / f).exists(), f
    assert json.loads((d / "metrics.json").read_text())["y"] == 6.0
    assert json.loads((d / "params.json").read_text())["x"] == 4
    assert f"report:     {d / 'tiny.html'}" in r.stdout and "nested.z" in r.stdout
    assert "Executing" in r.stderr  # the per-cell progress bar


def test_run_output_dir_and_device(env, tmp_path):
    out = tmp_path / "mine"
    r = tradingrl("run", "data_summary", "-q", "-p", "dataset", "nasdaq", "--device", "cpu", "--output-dir", out, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "params.json").read_text())["device"] == "cpu"
    assert json.loads((out / "metrics.json").read_text())["test"]["rows"] > 900
    assert "Executing" not in r.stderr


def test_run_failing_cell(env, tmp_path):
    out = tmp_path / "bad"
    r = tradingrl("run", "tiny", "-p", "fail_at", "2", "--output-dir", out, env=env)
    assert r.returncode == 1
    assert "FAILED" in r.stderr and "line 3: `raise RuntimeError(f'boom at x={x}')`" in r.stderr
    assert "RuntimeError: boom at x=2" in r.stderr and str(out / "tiny.ipynb") in r.stderr
    assert (out / "tiny.ipynb").exists() and "boom at x=2" in (out / "tiny.ipynb").read_text()


@pytest.mark.parametrize("args, message", [
    (["run", "tinny"], "unknown experiment 'tinny'; known experiments: "),
    (["run", "tiny", "-p", "xx", "1"], "unknown parameter(s) 'xx' for experiment 'tiny'; known parameters: x (int)"),
    (["run", "tiny", "-p", "x", "1.5"], "parameter 'x': '1.5' is not a valid int"),
    (["run", "tiny", "-p", "scale", "big"], "parameter 'scale': 'big' is not a valid float"),
    (["run", "tiny", "--device", "cpu"], "has no 'device' parameter"),
    (["sweep", "tiny", "--grid", "x=1,two"], "'two' is not a valid int"),
    (["sweep", "tiny", "--grid", "x"], "use KEY=V1,V2"),
])
def test_bad_input_exits_2_before_running(env, tmp_path, args, message):
    r = tradingrl(*args, env=env)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    if "unknown experiment" in message:  # lists every known one: the project's and the one on the search path
        repo = Path(__file__).resolve().parents[1] / "nbs" / "experiments"
        listed = r.stderr.split("known experiments: ")[1].split(" (searched")[0].split(", ")
        assert listed == sorted([p.stem for p in repo.glob("*.ipynb")] + ["tiny"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_bad_input(env):
    r = tradingrl("run", "data_summary", "--device", "cuda", env=env)
    assert r.returncode == 2 and "CUDA is not available" in r.stderr


@pytest.mark.slow
def test_sweep_with_one_failing_combination_then_results(env, tmp_path):
    root = tmp_path / "sw"
    r = tradingrl("sweep", "tiny", "--grid", "x=1,2,3", "--grid", "label=a", "-p", "fail_at", "3", "--jobs", "2",
                  "--output-dir", root, env=env)
    assert r.returncode == 1, r.stderr
    assert "2 ok, 1 failed" in r.stdout
    summary = r.stdout.split("sweep summary:")[1]
    bad = next(l for l in summary.splitlines() if "002-x=3" in l)
    assert "failed" in bad and "boom at x=3" in bad
    assert sum("ok" in l.split() for l in summary.splitlines()) == 2
    assert sorted(p.name for p in root.iterdir()) == ["000-x=1-label=a", "001-x=2-label=a", "002-x=3-label=a"]

    csv = tmp_path / "all.csv"
    q = tradingrl("results", root, "--sort", "y", "--desc", "--csv", csv, env=env)
    assert q.returncode == 0, q.stderr
    rows = [l.split() for l in q.stdout.splitlines()[1:4]]
    assert [row[0] for row in rows] == ["001-x=2-label=a", "000-x=1-label=a", "002-x=3-label=a"]
    import pandas as pd
    t = pd.read_csv(csv)
    assert list(t["y"].iloc[:2]) == [3.0, 1.5] and list(t["status"]) == ["ok", "ok", "failed"]
    q = tradingrl("results", root, "--sort", "nope", env=env)
    assert q.returncode == 2 and "cannot sort by 'nope'" in q.stderr


def test_sweep_all_ok_exits_0(env, tmp_path):
    r = tradingrl("sweep", "tiny", "-q", "--grid", "scale=2", "--output-dir", tmp_path / "sw", env=env)
    assert r.returncode == 0, r.stderr
    assert "1 ok, 0 failed" in r.stdout


def test_main_job_parameters_are_valid():
    "The Makefile's `run` target names a known experiment and only parameters it declares, with the right types."
    import re, shlex
    from tradingrl_nb import experiments as ex
    from tradingrl_nb.cli import build_parser
    make = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", make, re.M).group(1).replace("\\\n", " ")
    words = shlex.split(re.sub(r"\$\$\([^)]*\)", "STAMP", recipe))          # make's $$(date ...) in the run folder's name
    args = build_parser().parse_args(words[words.index(next(w for w in words if w.endswith("tradingrl"))) + 1:])
    assert args.command == "run" and args.name == "walk_forward"
    assert args.preset == "full"                                          # the stored run's parameters, kept in the notebook
    path, values = ex.prepare_run(args.name, dict(args.p or []), device="cpu" if args.device else None, preset=args.preset)
    specs = ex.experiment_parameters(path)
    assert values["total_timesteps"] > 100 * specs["total_timesteps"].default  # full size, not the tiny default
    assert values["dataset"] == "sp500" and values["execution"] == "next_close"
    df = load_market_data(values["dataset"])
    splits = {s.test_start.year: s for s in walk_forward_splits(df, train=values["train"], val=values["val"], test="1Y",
                                                              step="1Y", embargo=values["embargo"], mode=values["mode"])}
    for y in values["test_years"]:   # each window's training span can be built (no window fails after minutes of work)
        prepare_market(df, window=values["window"], start=splits[y].train_start, end=splits[y].train_end)
    # every test year the data allows (2005-2018: 2004's training would start on the data's first day, before the
    # features' warm-up), 3 seeds each, the rules beside the agent, two windows at a time
    assert values["test_years"] == list(range(2005, 2019)) and len(values["seeds"]) >= 3 and values["jobs"] == 2
    assert set(values["baselines"]) == {"momentum", "flat", "random"}


# ---------------------------------------------------------------- robust runs (issue 16, item 7)
SLEEPY_PARAMS = "seconds = 60\noutput_dir = None\n"
SLEEPY_CELLS = ("import pathlib, time\npathlib.Path(output_dir, 'started').write_text('1')\ntime.sleep(seconds)",
                "from tradingrl_nb.record import save_metrics\nsave_metrics({'slept': seconds}, output_dir)")


@pytest.fixture
def sleepy(env, tmp_path):
    "A `sleepy` experiment that marks its start in the run folder, then sleeps."
    make_notebook(tmp_path / "exps" / "sleepy.ipynb", SLEEPY_PARAMS, *SLEEPY_CELLS)
    return env


def _ignore_sigint():
    "What a shell does to a background job (`make test &`, a CI runner): the child inherits SIGINT ignored."
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_run(env, out, *args, until="started"):
    """`tradingrl run sleepy` in the background, started with SIGINT ignored (as a background job is), returned once
    `out/until` exists: "started" (its notebook's cell runs) or "run.json" (the folder is claimed, the kernel starts)."""
    import time
    p = subprocess.Popen([*CMD, "run", "sleepy", "-q", "--output-dir", str(out), *map(str, args)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ignore_sigint)
    for _ in range(6000):
        if (out / until).exists(): return p
        if p.poll() is not None: raise AssertionError(f"the run ended early: {p.communicate()}")
        time.sleep(0.02)
    p.kill()
    raise AssertionError("the run did not start in 120 s")


def one_line_error(r, code=2) -> str:
    "The command failed with `code` and said why in exactly one line, without a traceback."
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["run.json", "started"])
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_is_recorded(sleepy, tmp_path, sig, code, moment):
    "A signal stops the run wherever it is (the kernel starting, a cell running), even when SIGINT came in ignored."
    out = tmp_path / "r"
    p = start_run(sleepy, out, until=moment)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == code, stderr
    lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith("[IPKernelApp]")]  # the kernel's own log
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert f"interrupted by {signal.Signals(sig).name}" in lines[0] and str(out / "run.json") in lines[0]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and info["error"] == f"interrupted by {signal.Signals(sig).name}"
    if (out / "sleepy.ipynb").exists():   # not when the signal came before papermill wrote it
        meta = json.loads((out / "sleepy.ipynb").read_text())["metadata"]
        assert meta["papermill"]["exception"] is True and meta["tradingrl"]["status"] == "interrupted"
    r = tradingrl("results", tmp_path, env=sleepy)
    assert r.returncode == 0 and "interrupted" in r.stdout


@pytest.mark.slow
def test_second_run_into_a_folder_in_use_is_refused_and_killed_run_shows_died(sleepy, tmp_path):
    out = tmp_path / "r"
    p = start_run(sleepy, out, "-p", "seconds", "30")
    try:
        r = tradingrl("run", "tiny", "--output-dir", out, env=sleepy)
        line = one_line_error(r)
        assert f"run folder {out.resolve()} is in use by a run in progress (pid {p.pid} on" in line
        assert not (out / "tiny.ipynb").exists() and json.loads((out / "params.json").read_text()) == {"seconds": 30}
        assert "running" in tradingrl("results", tmp_path, env=sleepy).stdout
    finally:
        p.kill()
        p.wait()
    r = tradingrl("results", tmp_path, env=sleepy)
    assert r.returncode == 0, r.stderr
    row = next(l for l in r.stdout.splitlines()[1:] if l.split()[0] == "r")
    assert row.split()[2] == "died", r.stdout


def test_finished_folder_is_not_reused_without_overwrite(env, tmp_path):
    out = tmp_path / "r"
    assert tradingrl("run", "tiny", "-q", "--output-dir", out, env=env).returncode == 0
    line = one_line_error(tradingrl("run", "tiny", "-q", "-p", "x", "5", "--output-dir", out, env=env))
    assert "already holds a run (status ok); pass --overwrite" in line
    assert json.loads((out / "params.json").read_text())["x"] == 2          # untouched
    (out / "figures" / "old.png").write_bytes(b"")   # as if the old run had written it: cleared with the rest
    info = json.loads((out / "run.json").read_text())
    info["files"].append("figures/old.png")
    (out / "run.json").write_text(json.dumps(info))
    r = tradingrl("run", "tiny", "-q", "-p", "x", "5", "--overwrite", "--output-dir", out, env=env)
    assert r.returncode == 0, r.stderr
    assert not (out / "figures" / "old.png").exists() and json.loads((out / "params.json").read_text())["x"] == 5
    # a sweep into a folder whose runs exist is refused before it runs anything
    root = tmp_path / "sw"
    assert tradingrl("sweep", "tiny", "-q", "--grid", "x=1", "--output-dir", root, env=env).returncode == 0
    line = one_line_error(tradingrl("sweep", "tiny", "-q", "--grid", "x=1,2", "--output-dir", root, env=env))
    assert "1 of the sweep's run folders already hold runs (e.g. 000-x=1)" in line and not (root / "001-x=2").exists()
    assert tradingrl("sweep", "tiny", "-q", "--grid", "x=1,2", "--overwrite", "--output-dir", root, env=env).returncode == 0


def test_overwrite_clears_only_what_a_tradingrl_run_wrote(env, tmp_path):
    "--overwrite never deletes a file that no tradingrl run wrote: such files are refused, listed, and kept."
    thesis = tmp_path / "thesis"
    (thesis / "src").mkdir(parents=True)
    (thesis / "params.json").write_text("{}")
    (thesis / "thesis.tex").write_text("chapter 1")
    (thesis / "src" / "main.py").write_text("print(1)")
    line = one_line_error(tradingrl("run", "tiny", "-q", "--overwrite", "--output-dir", thesis, env=env))
    assert "no tradingrl run created" in line and "params.json" in line and "src/" in line and "thesis.tex" in line
    assert sorted(p.name for p in thesis.iterdir()) == ["params.json", "src", "thesis.tex"]   # nothing added either
    # a finished run with a file of the user's beside it: refused, the list names it, nothing is deleted
    out = tmp_path / "r"
    assert tradingrl("run", "tiny", "-q", "--output-dir", out, env=env).returncode == 0
    info = json.loads((out / "run.json").read_text())
    assert info["created_by"] == "tradingrl" and {"params.json", "tiny.ipynb", "figures/line.png"} <= set(info["files"])
    (out / "notes.md").write_text("my notes")
    (out / "figures" / "mine.png").write_bytes(b"png")
    line = one_line_error(tradingrl("run", "tiny", "-q", "--overwrite", "--output-dir", out, env=env))
    assert "files that run did not write: figures/mine.png, notes.md" in line
    assert (out / "notes.md").exists() and (out / "tiny.ipynb").exists() and (out / "figures" / "line.png").exists()
    (out / "notes.md").unlink()
    (out / "figures" / "mine.png").unlink()
    assert tradingrl("run", "tiny", "-q", "-p", "x", "3", "--overwrite", "--output-dir", out, env=env).returncode == 0
    assert json.loads((out / "params.json").read_text())["x"] == 3
    # a run that died (its process gone, run.json still says running) reports "died" when its folder is reused
    info = json.loads((out / "run.json").read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "run.json").write_text(json.dumps({**info, "status": "running", "pid": dead.pid, "files": None}))
    line = one_line_error(tradingrl("run", "tiny", "-q", "--output-dir", out, env=env))
    assert "already holds a run (status died)" in line
    assert tradingrl("run", "tiny", "-q", "--overwrite", "--output-dir", out, env=env).returncode == 0


def test_non_finite_values_are_stored_as_strings(env, tmp_path):
    out = tmp_path / "r"
    r = tradingrl("run", "tiny", "-q", "-p", "scale", "inf", "--output-dir", out, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "params.json").read_text())["scale"] == "inf"
    assert json.loads((out / "metrics.json").read_text())["y"] == "inf"
    r = tradingrl("run", "tiny", "-q", "-p", "scale", "nan", "--output-dir", tmp_path / "n", env=env)
    assert r.returncode == 0 and json.loads((tmp_path / "n" / "params.json").read_text())["scale"] == "nan"
    q = tradingrl("results", tmp_path, "--columns", "run,scale,y", env=env)
    assert q.returncode == 0, q.stderr
    rows = {l.split()[0]: l.split()[1:] for l in q.stdout.splitlines()[1:]}
    assert rows["r"] == ["inf", "inf"] and rows["n"] == ["NaN", "NaN"]


def test_parameters_negative_numbers_and_a_params_file(env, tmp_path):
    "-p takes negative numbers and -inf; --params-file (JSON or YAML) sets parameters, -p wins; for run and sweep."
    r = tradingrl("run", "tiny", "-q", "-p", "scale", "-1e-3", "-p", "x", "-3", "--output-dir", tmp_path / "neg", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "neg" / "params.json").read_text()).items() >= {"scale": -0.001, "x": -3}.items()
    r = tradingrl("run", "tiny", "-q", "-p", "scale", "-inf", "--output-dir", tmp_path / "inf", env=env)
    assert r.returncode == 0 and json.loads((tmp_path / "inf" / "params.json").read_text())["scale"] == "-inf", r.stderr
    (tmp_path / "p.yaml").write_text("x: 7\nlabel: from-file\n")
    r = tradingrl("run", "tiny", "-q", "--params-file", tmp_path / "p.yaml", "-p", "x", "8", "--output-dir", tmp_path / "y", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "y" / "params.json").read_text()).items() >= {"x": 8, "label": "from-file"}.items()
    (tmp_path / "p.json").write_text('{"label": "j", "nope": 1}')
    line = one_line_error(tradingrl("run", "tiny", "--params-file", tmp_path / "p.json", env=env))
    assert "unknown parameter(s) 'nope'" in line
    (tmp_path / "bad.yaml").write_text("x: 1\n  label: [\n")
    line = one_line_error(tradingrl("run", "tiny", "--params-file", tmp_path / "bad.yaml", env=env))
    assert f"--params-file {tmp_path / 'bad.yaml'}: not valid YAML" in line and "line 2" in line
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "must hold a mapping" in one_line_error(tradingrl("run", "tiny", "--params-file", tmp_path / "list.json", env=env))
    r = tradingrl("sweep", "tiny", "-q", "--params-file", tmp_path / "p.yaml", "--grid", "scale=-1,-0.5", "--output-dir",
                  tmp_path / "sw", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "sw" / "001-scale=-0.5" / "params.json").read_text()).items() >= {"x": 7, "scale": -0.5}.items()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["-p", "dataset", "ftse"], "parameter 'dataset': 'ftse' is not one of {sp500, nasdaq}"),
    (["-p", "execution", "next_opn"], "parameter 'execution': 'next_opn' is not one of {next_close, next_open, same_close}"),
    (["-p", "selection_metric", "bogus"], "parameter 'selection_metric': 'bogus' is not one of {sharpe,"),
    (["-p", "train_start", "2005x"], "parameter 'train_start': '2005x' is not a valid date or None (use a year, YYYY-MM or YYYY-MM-DD)"),
    (["-p", "train_end", "2005-02-30"], "parameter 'train_end': '2005-02-30' is not a valid date (no such day"),
])
def test_train_agent_choices_and_dates_are_checked_before_the_kernel_starts(env, tmp_path, args, message):
    line = one_line_error(tradingrl("run", "train_agent", *args, env=env))
    assert message in line, line
    assert not (tmp_path / "runs").exists()


def test_list_one_experiment_and_list_is_light(env):
    r = tradingrl("list", "walk_forward", env=env)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.strip().startswith("execution"))
    assert "{next_close, next_open, same_close}" in line and "'next_close'" in line
    assert "[1, inf)" in next(l for l in r.stdout.splitlines() if l.strip().startswith("jobs"))
    assert "preset full:" in r.stdout and "total_timesteps=150000" in " ".join(r.stdout.split())
    assert "dataset" in r.stdout and "train_agent" not in r.stdout.split("\n")[0]
    r = tradingrl("list", "train_agent", env=env)
    line = next(l for l in r.stdout.splitlines() if l.strip().startswith("train_start"))
    assert "date|None" in line.replace(" ", "")
    assert "unknown experiment 'nope'" in one_line_error(tradingrl("list", "nope", env=env))
    code = "import sys; from tradingrl_nb.cli import main; main(['list']); assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "train_agent" in r.stdout, r.stderr[-2000:]


def test_results_default_view_fits_and_a_bad_returns_csv_is_skipped(env, tmp_path):
    "results shows run, experiment, status, the parameters that vary, key metrics and the verdict, fitted to the terminal."
    root = tmp_path / "sw"
    assert tradingrl("sweep", "tiny", "-q", "--grid", "x=1,2,3", "--output-dir", root, env=env).returncode == 0
    days = "date,agent,buy_and_hold\n" + "".join(f"2020-01-{d:02d},{0.01 * ((d * 7) % 5 - 2)},{0.004 * ((d * 3) % 5 - 2)}\n"
                                                  for d in range(1, 29))
    (root / "000-x=1" / "returns.csv").write_text(days)
    (root / "001-x=2" / "returns.csv").write_text("date,agent,buy_and_hold\n2020-01-01,y,0.1\n")
    wide = {**env, "COLUMNS": "100"}
    r = tradingrl("results", root, env=wide)
    assert r.returncode == 0, r.stderr
    assert f"skipped the statistics of a run: {root / '001-x=2' / 'returns.csv'}" in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    head = lines[0].split()
    assert head[:4] == ["run", "experiment", "status", "x"] and "label" not in head and "started" not in head, lines[0]
    assert "verdict" in head and max(map(len, lines)) <= 100, r.stdout
    assert len(lines) == 4 and "inconclusive" in lines[1] or "holds" in lines[1] or "refuted" in lines[1], r.stdout
    r = tradingrl("results", root, "--columns", "all", env=wide)
    assert r.returncode == 0 and "label" in r.stdout and "started" in r.stdout, r.stderr


def _bad_notebook(tmp_path):
    p = tmp_path / "empty.ipynb"
    p.write_text("{}")
    return p


def _text_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    return p


def _a_file(tmp_path):
    p = tmp_path / "afile"
    p.write_text("x")
    return p


@pytest.mark.parametrize("make_args, message", [
    (lambda t: ["run", "tiny", "--output-dir", _a_file(t)], "afile: is a file, not a folder"),
    (lambda t: ["run", "tiny", "--output-dir", _a_file(t) / "sub"], "cannot create the folder"),
    (lambda t: ["run", _bad_notebook(t)], "empty.ipynb: not a readable notebook"),
    (lambda t: ["run", _text_file(t)], "notes.txt: a file that is not a notebook"),
    (lambda t: ["run", "tiny", "-p", "x", "7" * 100_000], "...(100,002 chars)"),
    (lambda t: ["run", "tiny", "-p", "x" * 100_000, "1"], "chars)' for experiment 'tiny'"),
    (lambda t: ["run", "ranged", "-p", "total_timesteps", "-5"], "parameter 'total_timesteps': -5 is outside its range (0, inf)"),
    (lambda t: ["run", "ranged", "-p", "dataset", "ftse"], "parameter 'dataset': 'ftse' is not one of {sp500, nasdaq}"),
    (lambda t: ["run", "data_summary", "-p", "window", "1"], "parameter 'window': 1 is outside its range [2, inf)"),
    (lambda t: ["results", _a_file(t)], "afile: is a file, not a runs folder"),
])
def test_ordinary_errors_are_one_line_exit_2(env, tmp_path, make_args, message):
    make_notebook(tmp_path / "exps" / "ranged.ipynb",
                  "total_timesteps = 64   # steps, in (0, inf)\ndataset = 'sp500'  # in {sp500, nasdaq}\noutput_dir = None\n", "pass")
    line = one_line_error(tradingrl(*make_args(tmp_path), env=env))
    assert message in line and len(line) < 1000, line[:2000]
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_output_dir(env, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try: assert "not writable" in one_line_error(tradingrl("run", "tiny", "--output-dir", ro / "x", env=env))
    finally: ro.chmod(0o755)


def test_results_skips_unreadable_runs_and_cuts_long_values(env, tmp_path):
    root = tmp_path / "all"
    for name, metrics in [("good", '{"y": 1.5}'), ("corrupt", '{"y": 1.'), ("listy", "[1, 2]")]:
        d = root / name
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"x": 1, "label": "L" * 100_000 if name == "good" else "a"}))
        (d / "run.json").write_text(json.dumps({"experiment": "tiny", "status": "ok"}))
        (d / "metrics.json").write_text(metrics)
    r = tradingrl("results", root, env=env)
    assert r.returncode == 0, r.stderr
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("tradingrl results: warning: skipped a run: ") for w in warnings)
    assert str(root / "corrupt" / "metrics.json") + ": unreadable" in r.stderr
    assert str(root / "listy" / "metrics.json") + ": holds a list, not a JSON object" in r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[1].split()[0] == "good" and max(map(len, lines)) < 300


def test_metrics_json_that_is_not_an_object_fails_the_run_cleanly(env, tmp_path):
    make_notebook(tmp_path / "exps" / "listy.ipynb", "output_dir = None\n",
                  "import pathlib\npathlib.Path(output_dir, 'metrics.json').write_text('[1, 2]')")
    out = tmp_path / "l"
    r = tradingrl("run", "listy", "-q", "--output-dir", out, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{out.resolve() / 'metrics.json'}: holds a list, not an object" in r.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_device_defaults_to_auto(env, tmp_path):
    "--device's default is auto (the settings' device), whatever the notebook's own default."
    make_notebook(tmp_path / "exps" / "dev.ipynb", 'device = "cpu"\noutput_dir = None\n', "print(device)")
    assert "default: auto" in " ".join(tradingrl("run", "--help", env=env).stdout.split())
    r = tradingrl("run", "dev", "-q", "--output-dir", tmp_path / "a", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "a" / "params.json").read_text())["device"] == "auto"
    r = tradingrl("run", "dev", "-q", "--output-dir", tmp_path / "b", env={**env, "TRADINGRL_DEVICE": "cpu"})
    assert json.loads((tmp_path / "b" / "params.json").read_text())["device"] == "cpu"
    assert tradingrl("run", "tiny", "-q", "--device", "auto", "--output-dir", tmp_path / "c", env=env).returncode == 0


def _user_csvs(tmp_path, n_days: int = 1800, start: str = "2013-01-01"):
    "A researcher's own files: daily OHLCV bars (synthetic_market) and a VIX-like feature (date, close)."
    from tradingrl_nb.data import synthetic_market
    m = synthetic_market(n_days, seed=5, start=start)
    m[["open", "high", "low", "close", "volume"]].to_csv(tmp_path / "prices.csv", index_label="Date")
    vix = (15 + 12 * m["regime"] + m["close"].pct_change().rolling(5, min_periods=1).std().fillna(0) * 300).rename("Close")
    vix.to_frame().to_csv(tmp_path / "vix.csv", index_label="date")
    return tmp_path / "prices.csv", tmp_path / "vix.csv"


@pytest.mark.slow
def test_readme_example_trains_on_a_users_csv_and_feature_file(env, tmp_path):
    "The README's own-data example, verbatim: -p data trains on the user's CSV (over dataset), -p features adds a VIX-like series."
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("tradingrl run train_agent -p data "))
    data, feats = _user_csvs(tmp_path)          # 2013-01-01 to 2019-11: the example's spans fall inside
    out = tmp_path / "own"
    r = tradingrl(*line.split()[1:], "-q", "--output-dir", out, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "unknown parameter" not in r.stderr, r.stderr    # papermill's noise about annotated parameters: checked here already
    params = json.loads((out / "params.json").read_text())
    assert params["data"] == str(data.resolve()) and params["features"] == str(feats.resolve())   # the kernel runs in `out`
    m = json.loads((out / "metrics.json").read_text())
    assert m["span"]["test_end"] == "2019-11-25" and m["window"]["data"] == str(data.resolve())
    assert m["window"]["features"] == str(feats.resolve())
    nb = (out / "train_agent.ipynb").read_text()
    assert "prices.csv on " in nb and "observing vix, vix_chg from vix.csv" in nb


@pytest.mark.parametrize("exp", ["train_agent", "walk_forward"])
@pytest.mark.parametrize("name, message", [("data", "parameter 'data': no such file: "), ("features", "parameter 'features': no such file: ")])
def test_a_missing_data_file_is_refused_before_the_kernel_starts(env, tmp_path, exp, name, message):
    line = one_line_error(tradingrl("run", exp, "-p", name, "nope/missing.csv", env=env, cwd=tmp_path))
    assert message + str(tmp_path / "nope" / "missing.csv") in line, line
    line = one_line_error(tradingrl("run", exp, "-p", name, tmp_path, env=env, cwd=tmp_path))
    assert f"parameter {name!r}: {tmp_path} is a folder, not a file" in line, line
    assert not (tmp_path / "runs").exists()


def test_a_bad_user_csv_fails_naming_file_column_and_row(env, tmp_path):
    data, _ = _user_csvs(tmp_path, n_days=300)
    text = data.read_text().splitlines()
    text[7] = text[7].rsplit(",", 2)[0] + ",abc," + text[7].rsplit(",", 1)[1]
    data.write_text("\n".join(text) + "\n")
    r = tradingrl("run", "train_agent", "-q", "--device", "cpu", "-p", "data", data, "--output-dir", tmp_path / "bad", env=env)
    assert r.returncode == 1 and f"{data}: column 'close', row 7" in r.stderr, r.stderr[-3000:]


def _run_folder(d: Path, params: dict, metrics: dict, experiment="train_agent", status="ok"):
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(params))
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "run.json").write_text(json.dumps(dict(created_by="tradingrl", experiment=experiment, status=status)))
    return d


def test_compare_shows_only_what_differs_aligned_and_fitted(env, tmp_path):
    "tradingrl compare RUN_A RUN_B: the parameters and metrics that differ, one aligned row each, within the terminal width."
    same = dict(n_envs=4, dataset="sp500")
    a = _run_folder(tmp_path / "a", dict(same, learning_rate=3e-4, seed=0, data=None),
                    {"test": {"agent": {"sharpe": 0.5, "cagr": 0.1}}, "training": {"timesteps": 2048, "best_step": 1024},
                     "verdict": "inconclusive", "only_a": 1, "notes": "x" * 300})
    b = _run_folder(tmp_path / "b", dict(same, learning_rate=1e-4, seed=0, data="/some/where/a/very/long/path/" + "p" * 200 + ".csv"),
                    {"test": {"agent": {"sharpe": 0.75, "cagr": 0.1}}, "training": {"timesteps": 2048, "best_step": 2048},
                     "verdict": "skill", "notes": "y" * 300})
    r = tradingrl("compare", a, b, env={**env, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(len(l) <= 80 for l in lines), [l for l in lines if len(l) > 80]
    rows = {l.split()[0]: l.split() for l in lines if l.strip() and not l.startswith(" ") and len(l.split()) >= 3}
    assert rows["learning_rate"][1:3] == ["0.0003", "0.0001"]
    assert rows["test.agent.sharpe"][1:4] == ["0.5", "0.75", "+0.25"]
    assert rows["training.best_step"][1:4] == ["1024", "2048", "+1024"]
    assert rows["verdict"][1:3] == ["inconclusive", "skill"] and rows["only_a"][1:3] == ["1", "-"]
    assert rows["data"][1] == "None" and "…" in rows["data"][2]
    for same_key in ("n_envs", "dataset", "seed", "test.agent.cagr", "training.timesteps"): assert same_key not in rows
    col = lambda name: lines[[l.split()[0] if l.strip() else "" for l in lines].index(name)]
    assert col("learning_rate").index("0.0001") == col("test.agent.sharpe").index("0.75")   # one column for B
    assert "parameters that differ (2 of 5)" in r.stdout and "metrics that differ" in r.stdout
    r = tradingrl("compare", a, a, env=env)
    assert r.returncode == 0 and "no parameter differs" in r.stdout and "no metric differs" in r.stdout, r.stdout
    line = one_line_error(tradingrl("compare", a, tmp_path / "nope", env=env))
    assert f"{tmp_path / 'nope'}: not a run folder (no params.json)" in line


def test_main_works_outside_the_main_thread(env, monkeypatch, capsys):
    "main() called from another thread (nbdev-test runs notebooks so) installs no signal handlers and does its job."
    import threading
    from tradingrl_nb.cli import main
    monkeypatch.setenv("TRADINGRL_EXPERIMENTS_DIR", env["TRADINGRL_EXPERIMENTS_DIR"])
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("rc", main(["list"])))
    t.start()
    t.join(60)
    assert out.get("rc") == 0 and "tiny" in capsys.readouterr().out


RESUMABLE = ("-p", "total_timesteps", "2048", "-p", "eval_every", "256", "-p", "patience", "0", "-p", "test_end", "2015-12",
             "-p", "bootstrap_reps", "50", "-p", "baselines", "[]", "--device", "cpu", "-q")


@pytest.mark.slow
def test_resume_continues_an_interrupted_train_agent_run_to_the_same_result(env, tmp_path):
    """A train_agent run stopped after its first evaluations continues from its last checkpoint with
    `tradingrl run --resume DIR` and ends with the same metrics and returns as the same run left alone (CPU, one seed)."""
    import time
    whole, part = tmp_path / "whole", tmp_path / "part"
    p = subprocess.Popen([*CMD, "run", "train_agent", *RESUMABLE, "--output-dir", str(part)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(6000):
        if (part / "checkpoint" / "latest.json").exists() or p.poll() is not None: break
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr[-3000:]
    assert json.loads((part / "run.json").read_text())["status"] == "interrupted"
    step = json.loads((part / "checkpoint" / "latest.json").read_text())["timesteps"]
    assert 0 < step < 2048
    line = one_line_error(tradingrl("run", "train_agent", "--resume", part, "-p", "seed", "1", env=env))
    assert "--resume continues the run with its own parameters" in line
    r = tradingrl("run", "--resume", part, "-q", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((part / "run.json").read_text())
    assert info["status"] == "ok" and info["resumed"][0]["from_timesteps"] == step
    r = tradingrl("run", "train_agent", *RESUMABLE, "--output-dir", whole, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("metrics.json", "returns.csv", "params.json"): assert (part / f).read_bytes() == (whole / f).read_bytes(), f
    assert "status ok" in one_line_error(tradingrl("run", "--resume", part, env=env))   # nothing left to resume
    line = one_line_error(tradingrl("run", "--resume", tmp_path / "nope", env=env))
    assert f"{tmp_path / 'nope'}: not a run folder" in line


@pytest.mark.slow
def test_interrupted_process_sweep_says_one_line_and_keeps_kernel_noise_in_kernel_logs(sleepy, tmp_path):
    "Ctrl-C on a process-backend sweep: one line, exit 130, every run 'interrupted'; the kernels' ZMQ noise goes to kernel.log."
    import time
    out = tmp_path / "s"
    p = subprocess.Popen([*CMD, "sweep", "sleepy", "-q", "--grid", "seconds=40,41", "--jobs", "2", "--output-dir", str(out)],
                         env=sleepy, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for _ in range(6000):                                   # both runs' cells are running
        if len(list(out.glob("*/started"))) == 2: break
        if p.poll() is not None: raise AssertionError(f"the sweep ended early: {p.communicate()}")
        time.sleep(0.02)
    else:
        p.kill()
        raise AssertionError("the sweep's runs did not start in 120 s")
    os.killpg(p.pid, signal.SIGINT)                         # what Ctrl-C does: the whole foreground process group
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and "ZMQError" not in stderr and "IPKernelApp" not in stderr, stderr
    assert [l for l in stderr.splitlines() if l.strip()] == ["tradingrl sweep: interrupted by SIGINT"], stderr
    runs = sorted(d for d in out.iterdir() if d.is_dir())
    assert len(runs) == 2 and all(json.loads((d / "run.json").read_text())["status"] == "interrupted" for d in runs)
    assert all((d / "kernel.log").exists() for d in runs)


def test_every_kind_of_run_shows_its_verdict_in_the_results_view():
    "A single run's stats.verdict, an experiment's own verdict (walk_forward), a findings experiment's verdict counts."
    import pandas as pd
    from tradingrl_nb.cli import results_view, row_verdicts
    findings = json.dumps([{"id": "a", "verdict": "holds"}, {"id": "b", "verdict": "inconclusive"}, {"id": "c", "verdict": "holds"}])
    t = pd.DataFrame({"run": ["one", "wf", "claims", "plain"], "experiment": ["train_agent", "walk_forward", "ablation", "x"],
                      "status": ["ok"] * 4, "stats.verdict": ["skill", None, None, None],
                      "verdict": [None, "inconclusive", None, None], "windows.pooled.verdict": [None, "inconclusive", None, None],
                      "findings": [None, None, findings, None]})
    assert results_view(t)["verdict"].tolist() == ["skill", "inconclusive", "2 holds, 1 inconclusive", ""]
    # without a stats.verdict column, another *verdict column (a window's) still comes after the findings' counts
    u = t.drop(columns="stats.verdict").assign(**{"windows.pooled.verdict": [None, "inconclusive", "no skill", None]})
    assert row_verdicts(u).tolist() == ["", "inconclusive", "2 holds, 1 inconclusive", ""]
