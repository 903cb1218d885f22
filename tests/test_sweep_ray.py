"""Sweeps on Ray (issue 16, item 1): each grid point is a Ray task running papermill; same run folders and table."""
import json

import pytest

ray = pytest.importorskip("ray")

from tradingrl_nb import runtable as rt
from tradingrl_nb.sweep import sweep


@pytest.mark.slow
def test_ray_sweep_2x1_grid_with_a_failing_run(tiny, tmp_path, monkeypatch):
    # a loaded 2-core machine starts Ray's agents slowly: give them longer than the default 15 s
    monkeypatch.setenv("RAY_agent_register_timeout_ms", "180000")
    monkeypatch.setenv("RAY_raylet_start_wait_time_s", "180")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        root = tmp_path / "sw"
        lines = []
        table = sweep("tiny", {"x": [1, 2], "label": ["r"]}, {"fail_at": 2}, output_dir=root, backend="ray",
                         num_cpus=1, echo=lines.append)
        assert ray.is_initialized()   # the caller's Ray is left running
    finally:
        ray.shutdown()
    assert list(table["x"]) == [1, 2] and list(table["status"]) == ["ok", "failed"]
    assert "boom at x=2" in table["error"].iloc[1] and table["y"].iloc[0] == 1.5
    assert sorted(p.name for p in root.iterdir()) == ["000-x=1-label=r", "001-x=2-label=r"]
    assert json.loads((root / "000-x=1-label=r" / "run.json").read_text())["status"] == "ok"
    assert len(lines) == 4 and "starting Ray" in lines[0] and "Ray is up" in lines[1], lines
    assert lines[-1].startswith("[2/2 runs done")
    res = rt.results(root)
    assert list(res["status"]) == ["ok", "failed"] and list(res["x"]) == [1, 2]


def test_bad_backend_is_bad_input(tiny, tmp_path):
    with pytest.raises(ValueError, match="backend 'dask': use process or ray"):
        sweep("tiny", {"x": [1]}, output_dir=tmp_path / "s", backend="dask")


def test_ray_sweep_says_what_it_does_before_ray_is_up(tiny, tmp_path, monkeypatch):
    "Ray takes tens of seconds to import and start on a loaded machine: the sweep prints a line before it starts Ray."
    lines, seen = [], []
    def init(*a, **k):
        seen.append(list(lines))
        raise RuntimeError("stop before Ray starts")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(RuntimeError, match="stop before Ray starts"):
        sweep("tiny", {"x": [1, 2]}, output_dir=tmp_path / "s", backend="ray", echo=lines.append)
    assert seen and len(seen[0]) == 1, seen
    assert "2 runs" in seen[0][0] and "starting Ray" in seen[0][0], seen[0]
