"""The HTML report a reader opens (issue 16, item 5) and the comparison figure of `results --plot` (item 6)."""
import json, os, re, subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tradingrl_nb import experiments as ex
from test_cli import CMD
from test_experiments import TINY_CELLS, TINY_PARAMS, make_notebook, tiny  # noqa: F401 (fixture)


def test_report_opens_with_verdict_metrics_and_figures(tiny, tmp_path):
    out = tmp_path / "r"
    r = ex.run_experiment("tiny", {"x": 3}, output_dir=out, progress=False)
    html = r.report.read_text()
    pos = {k: html.find(s) for k, s in [("verdict", 'id="verdict"'), ("link", 'href="tiny.notebook.html"'),
                                         ("metrics", 'id="metrics"'), ("figure", "<img")]}
    assert all(v > 0 for v in pos.values()) and pos["verdict"] < pos["link"] < pos["metrics"] < pos["figure"], pos
    assert re.search(r'class="verdict ok"[^>]*><b>finished in [\d.]+ s</b>', html)
    assert "<td>nested.z</td><td class=\"num\">5.5</td>" in html and "<td>y</td><td class=\"num\">4.5</td>" in html
    assert "save_metrics" not in html and "fail_at" in html.split("<details>")[1]   # code hidden; parameters folded
    full = (out / "tiny.notebook.html").read_text()
    text = re.sub(r"<[^>]+>", "", full)
    assert "save_metrics" in text and "raise RuntimeError" in text    # the full notebook is one click away


def test_report_of_a_failed_run_says_why_first(tiny, tmp_path):
    r = ex.run_experiment("tiny", {"fail_at": 2}, output_dir=tmp_path / "f", progress=False, raise_on_failure=False)
    html = r.report.read_text()
    verdict = html[html.find('id="verdict"'):html.find("</div>")]
    assert "FAILED" in verdict and "RuntimeError: boom at x=2" in verdict and "line 3" in verdict
    assert html.find("boom at x=2") < html.find("<details>")


def test_verdict_metrics_are_listed_in_the_verdict(tmp_path):
    nb = make_notebook(tmp_path / "v.ipynb", "output_dir = None\n",
                       "from tradingrl_nb.experiments import save_metrics\n"
                       "save_metrics({'claims': {'vgs': {'verdict': 'holds', 'p': 0.01}}}, output_dir)")
    r = ex.run_experiment(nb, output_dir=tmp_path / "o", progress=False)
    verdict = r.report.read_text().split('id="verdict"')[1].split("</div>")[0]
    assert "<li><b>claims.vgs.verdict</b>: holds</li>" in verdict


def _fake_runs(root: Path, values: dict) -> None:
    for i, (lr, seed, sharpe) in enumerate((lr, s, y) for lr, ys in values.items() for s, y in enumerate(ys)):
        d = root / f"{i:03d}"; d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"lr": lr, "seed": seed}))
        (d / "run.json").write_text(json.dumps({"experiment": "x", "status": "ok"}))
        (d / "metrics.json").write_text(json.dumps({"test": {"sharpe": sharpe}}))


def test_compare_runs_mean_and_t_interval(tmp_path):
    from scipy import stats
    _fake_runs(tmp_path, {0.001: [0.1, 0.3, 0.2], 0.01: [0.5, 0.9], 0.1: [1.0]})
    s = ex.compare_runs(ex.results(tmp_path), "test.sharpe", "lr")
    assert list(s["lr"]) == [0.001, 0.01, 0.1] and list(s["n"]) == [3, 2, 1]
    y = np.array([0.1, 0.3, 0.2]); h = stats.t.ppf(0.975, 2) * y.std(ddof=1) / np.sqrt(3)
    assert s["mean"].iloc[0] == pytest.approx(0.2) and s["hi"].iloc[0] == pytest.approx(0.2 + h)
    assert s["lo"].iloc[1] == pytest.approx(0.7 - stats.t.ppf(0.975, 1) * np.std([0.5, 0.9], ddof=1) / np.sqrt(2))
    assert np.isnan(s["lo"].iloc[2])   # one run: no interval


def test_results_plot_draws_the_comparison(tmp_path):
    from PIL import Image
    root = tmp_path / "sw"
    _fake_runs(root, {0.001: [0.1, 0.3], 0.01: [0.5, 0.9]})
    env = {**os.environ}
    r = subprocess.run([*CMD, "results", str(root), "--plot", "test.sharpe", "--by", "lr"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fig = root / "compare-test.sharpe-by-lr.png"
    assert f"figure: {fig}" in r.stdout and Image.open(fig).size[0] > 300
    assert re.search(r"0\.001\s+2\s+0\.2\b", r.stdout), r.stdout
    r = subprocess.run([*CMD, "results", str(root), "--plot", "test.sharpe"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "give --by PARAM (parameters that vary: lr, seed)" in r.stderr   # two vary: ambiguous
    r = subprocess.run([*CMD, "results", str(root), "--plot", "nope", "--by", "lr"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no column 'nope'" in r.stderr
