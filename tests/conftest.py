"""Shared pytest set-up and fixtures (the builders they use live in `tradingrl_nb.testing`)."""
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from tradingrl_nb.testing import TINY_CELLS, TINY_PARAMS, make_notebook

# Property tests draw the same examples on every run and machine (derandomize): the suite's verdict must not depend on
# the day's random seed. `HYPOTHESIS_PROFILE=explore pytest ...` draws fresh examples when hunting for new failures.
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars",
                  # the site must render offline: every host but the local server fails at once
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]

# scripts/test.sh runs the suite on every core (pytest-xdist: `-n auto --dist loadgroup`). The tests of these modules
# share an expensive module-scoped fixture (the docs site, two trained runs, a Ray cluster) and run on one worker per
# group, so that it is built once, not once per worker; the two Ray modules share a group, so that two local Ray
# clusters never run at once. Every other test is scheduled on its own: its files live under tmp_path, its ports are
# picked free by the OS, its signals go to its own child processes.
XDIST_GROUPS = {"test_docs.py": "docs", "test_walk_forward.py": "walk_forward", "test_findings_sappo.py": "findings_sappo",
                "test_pbt_ray.py": "ray", "test_sweep_ray.py": "ray"}


def xdist_scope(nodeid: str) -> str:
    "The unit a worker runs as a whole: a group of XDIST_GROUPS, an `xdist_group` mark's name, else the test alone."
    if nodeid.rfind("@") > nodeid.rfind("]"): return nodeid.rsplit("@", 1)[1]     # an xdist_group mark (pytest < 9.2)
    return XDIST_GROUPS.get(Path(nodeid.split("::", 1)[0]).name, nodeid)


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup`, grouped by XDIST_GROUPS. xdist's own loadgroup marks a group by renaming the test's node id,
    which pytest 9.2 no longer lets it do (pytest-xdist issue 1386: the groups are silently ignored), so the groups are
    read from the module names here instead."""
    if config.getvalue("dist") != "loadgroup": return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str: return xdist_scope(nodeid)
    return ModuleGroups(config, log)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test models are tiny: an intra-op thread pool only adds contention on a 2-core machine
    (measured here: 30 small training steps took 5.4 s with the default threads vs 0.1 s on one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    "A fast experiment `tiny` on the experiments search path, and runs going to tmp_path/runs."
    d = tmp_path / "exps"
    make_notebook(d / "tiny.ipynb", TINY_PARAMS, *TINY_CELLS)
    monkeypatch.setenv("TRADINGRL_EXPERIMENTS_DIR", str(d))
    monkeypatch.setenv("TRADINGRL_RUNS_DIR", str(tmp_path / "runs"))
    return d / "tiny.ipynb"


@pytest.fixture(scope="module")
def chromium():
    "Run headless Debian chromium with the given arguments (installed on first use; the test is skipped without it)."
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "install_chromium.sh")], timeout=900)
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed and scripts/install_chromium.sh could not install it "
                    "(needs root and apt-get with access to Debian's packages)")

    def run(*args):
        with tempfile.TemporaryDirectory() as profile:
            r = subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                               capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
        return r
    return run
