"""The HTML report a reader opens (issue 16, item 5) and the comparison figure of `results --plot` (item 6)."""
import json, os, re, subprocess
from pathlib import Path

import numpy as np
import pytest

from tradingrl_nb import experiments as ex
from tradingrl_nb import runtable as rt
from test_cli import CMD
from tradingrl_nb.testing import make_notebook


def test_report_opens_with_verdict_metrics_and_figures(tiny, tmp_path):
    out = tmp_path / "r"
    r = ex.run_experiment("tiny", {"x": 3}, output_dir=out, progress=False)
    html = r.report.read_text()
    pos = {k: html.find(s) for k, s in [("verdict", 'id="verdict"'), ("link", 'href="tiny.notebook.html"'),
                                         ("figure", "<img"), ("metrics", 'id="metrics"')]}
    assert all(v > 0 for v in pos.values()) and pos["verdict"] < pos["link"] < pos["figure"] < pos["metrics"], pos
    assert re.search(r'class="verdict ok"[^>]*><b>finished in [\d.]+ s</b>', html)
    assert "<td>nested.z</td><td class=\"num\">5.5</td>" in html and "<td>y</td><td class=\"num\">4.5</td>" in html
    assert "save_metrics" not in html and "fail_at" in html.split("<summary>Parameters</summary>")[1]   # code hidden; parameters folded
    full = (out / "tiny.notebook.html").read_text()
    text = re.sub(r"<[^>]+>", "", full)
    assert "save_metrics" in text and "raise RuntimeError" in text    # the full notebook is one click away


def test_a_stored_run_links_to_its_docs_page_and_results_keeps_no_notebook_copies(tmp_path):
    "A run under results/ links to its rendered page (its full-notebook HTML is not committed: it repeats the .ipynb)."
    nb = make_notebook(tmp_path / "demo.ipynb", "output_dir = None\n", "x = 1")
    stored = ex.run_experiment(nb, output_dir=tmp_path / "results" / "demo", progress=False).report.read_text()
    assert 'href="https://tradingrl-nb.github.io/tradingrl_nb/results/demo.html"' in stored
    local = ex.run_experiment(nb, output_dir=tmp_path / "runs" / "demo", progress=False).report.read_text()
    assert 'id="docs-page"' not in local and 'href="demo.notebook.html"' in local
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=root, capture_output=True, text=True).stdout.split()
    if not tracked: pytest.skip("not a git checkout")
    assert [f for f in tracked if f.endswith(".notebook.html")] == []


def test_report_of_a_failed_run_says_why_first(tiny, tmp_path):
    r = ex.run_experiment("tiny", {"fail_at": 2}, output_dir=tmp_path / "f", progress=False, raise_on_failure=False)
    html = r.report.read_text()
    verdict = html[html.find('id="verdict"'):html.find("</div>")]
    assert "FAILED" in verdict and "RuntimeError: boom at x=2" in verdict and "line 3" in verdict
    assert html.find("boom at x=2") < html.find("<details>")


def test_verdict_metrics_are_listed_in_the_verdict(tmp_path):
    nb = make_notebook(tmp_path / "v.ipynb", "output_dir = None\n",
                       "from tradingrl_nb.record import save_metrics\n"
                       "save_metrics({'claims': {'vgs': {'verdict': 'holds', 'p': 0.01}}}, output_dir)")
    r = ex.run_experiment(nb, output_dir=tmp_path / "o", progress=False)
    verdict = r.report.read_text().split('id="verdict"')[1].split("</div>")[0]
    assert "<li><b>claims.vgs.verdict</b>: holds</li>" in verdict


def _fake_runs(root: Path, values: dict) -> None:
    for i, (lr, seed, sharpe) in enumerate((lr, s, y) for lr, ys in values.items() for s, y in enumerate(ys)):
        d = root / f"{i:03d}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"lr": lr, "seed": seed}))
        (d / "run.json").write_text(json.dumps({"experiment": "x", "status": "ok"}))
        (d / "metrics.json").write_text(json.dumps({"test": {"sharpe": sharpe}}))


def test_compare_runs_mean_and_t_interval(tmp_path):
    from scipy import stats
    _fake_runs(tmp_path, {0.001: [0.1, 0.3, 0.2], 0.01: [0.5, 0.9], 0.1: [1.0]})
    s = rt.compare_runs(rt.results(tmp_path), "test.sharpe", "lr")
    assert list(s["lr"]) == [0.001, 0.01, 0.1] and list(s["n"]) == [3, 2, 1]
    y = np.array([0.1, 0.3, 0.2])
    h = stats.t.ppf(0.975, 2) * y.std(ddof=1) / np.sqrt(3)
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


def _report_notebook(path: Path) -> Path:
    "An experiment whose cells tagged `report` hold its result: a compact table and a figure; other cells hold the rest."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [("output_dir = None", ["parameters"]),
             ("import pandas as pd\nimport matplotlib.pyplot as plt\n"
              "from tradingrl_nb.record import save_metrics, save_figure\nprint('setting up: not the result')\n"
              "def draw(a, b): fig, ax = plt.subplots(); ax.plot([a, b]); return fig", []),
             ("save_metrics({'test_stats': {'sharpe_diff': -0.18, 'sharpe_diff_low': -0.53, 'sharpe_diff_high': 0.1, "
              "'verdict': 'inconclusive'}, 'windows': {'pooled': {'diff': 0.4, 'diff_low': 0.1, 'diff_high': 0.7, "
              "'verdict': 'skill'}}, 'detail_metric': 42.5}, output_dir)", []),
             ("print('COMPACT TABLE: window 2008 -0.18 inconclusive')\n"
              "pd.DataFrame({'verdict': ['inconclusive']}, index=['test 2008'])", ["report"]),
             ("save_figure(draw(0, 1), 'tearsheet', output_dir);", ["report"]),     # shown inline too: once in the report
             ("save_figure(draw(1, 0), 'zz_detail', output_dir);", [])]
    for src, tags in cells:
        c = nbformat.v4.new_code_cell(src)
        if tags: c.metadata["tags"] = tags
        nb.cells.append(c)
    nbformat.write(nb, path)
    return path


def test_report_reads_as_a_tearsheet(tmp_path):
    """The verdict in words (subject, estimate, interval, verdict), then what the notebook's `report` cells show (its
    compact table and figures), then the other figures; every metric folded at the end."""
    nb = _report_notebook(tmp_path / "exp.ipynb")
    r = ex.run_experiment(nb, output_dir=tmp_path / "o", progress=False)
    html = r.report.read_text()
    verdict = html.split('id="verdict"')[1].split("</div>")[0]
    assert "agent minus buy-and-hold Sharpe (test) -0.18 [-0.53, +0.10]: inconclusive" in verdict, verdict
    assert "agent minus buy-and-hold Sharpe (pooled) +0.40 [+0.10, +0.70]: skill" in verdict, verdict
    pos = {k: html.find(s) for k, s in [("verdict", 'id="verdict"'), ("table", "COMPACT TABLE"), ("frame", "<th>test 2008</th>"),
                                         ("tearsheet", 'alt="tearsheet"'), ("detail", 'alt="zz_detail"'), ("metrics", 'id="metrics"')]}
    assert all(v > 0 for v in pos.values()) and pos["verdict"] < pos["table"] < pos["frame"] < pos["tearsheet"] \
        < pos["detail"] < pos["metrics"], pos
    assert html.count('alt="tearsheet"') == 1 and 'alt="figure"' not in html and "setting up: not the result" not in html
    assert html.rfind("<details", 0, pos["metrics"]) > pos["detail"]          # folded


def test_run_prints_the_report_cells_not_every_metric(tmp_path):
    "The terminal summary of a run is what its report opens with: the verdict and the report cells' text, not a metric dump."
    nb = _report_notebook(tmp_path / "exp.ipynb")
    r = subprocess.run([*CMD, "run", str(nb), "-q", "--output-dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "agent minus buy-and-hold Sharpe (test) -0.18 [-0.53, +0.10]: inconclusive" in r.stdout
    assert "COMPACT TABLE: window 2008 -0.18 inconclusive" in r.stdout and "detail_metric" not in r.stdout
    assert "setting up" not in r.stdout and "tradingrl results" in r.stdout   # where every metric is


@pytest.mark.slow
def test_report_renders_in_chromium(chromium, tmp_path):
    "In a browser the report shows the verdict box on top and its figures decoded (matplotlib's blue lines visible)."
    import matplotlib.image as mpimg
    r = ex.run_experiment(_report_notebook(tmp_path / "exp.ipynb"), output_dir=tmp_path / "o", progress=False)
    dom = chromium("--dump-dom", r.report.as_uri()).stdout
    assert "agent minus buy-and-hold Sharpe (test) -0.18 [-0.53, +0.10]: inconclusive" in dom and dom.count("<img") == 2
    shot = tmp_path / "report.png"
    chromium("--window-size=1000,2600", f"--screenshot={shot}", r.report.as_uri())
    px = mpimg.imread(shot)[..., :3]
    near = lambda rgb: (np.abs(px - np.array(rgb) / 255).max(axis=-1) < 0.06)
    rows_green = np.flatnonzero(near((0xe6, 0xf4, 0xea)).sum(axis=1) > 300)  # the verdict box (status ok), page-wide
    rows_blue = np.flatnonzero(near((31, 119, 180)).any(axis=1))            # matplotlib's C0 lines in the figures
    assert len(rows_green) and len(rows_blue) > 20, (len(rows_green), len(rows_blue))
    assert rows_green.max() < rows_blue.min()                                # the verdict above the figures
