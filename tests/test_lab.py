"""`make lab` (issue 16, item 4): JupyterLab starts as root and as a normal user, and notebooks carry the project's
kernelspec (kept by nbdev-clean) so they open on the kernel at once, rendered, with no kernel dialog."""
import json, os, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import set_kernelspec  # noqa: E402

# the notebooks this branch owns carry it; the lead applies `make kernelspec` to the rest after merging
OWNED = ["10_experiments", "10a_cli", "10b_rundir", "10c_progress", "00a_config", "index", "experiments/data_summary",
         "experiments/ablation_vgs_upgd", "experiments/pbt_population", "experiments/robustness_sappo"]


def _make_lab(*env_cmd) -> str:
    r = subprocess.run([*env_cmd, "make", "-s", "-o", "setup", "lab", "JUPYTER=echo"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[-1]


def test_make_lab_allows_root_only_when_root():
    line = _make_lab()
    assert line.startswith("lab --notebook-dir=nbs")
    assert ("--allow-root" in line) == (os.geteuid() == 0)
    if os.geteuid() == 0 and shutil.which("setpriv"):   # the same target as a normal user (nobody)
        tmp = Path(tempfile.mkdtemp())
        shutil.copy(ROOT / "Makefile", tmp)
        tmp.chmod(0o755)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "make", "-s", "-C", str(tmp),
                            "-o", "setup", "lab", "JUPYTER=echo"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1].rstrip() == "lab --notebook-dir=nbs"


def test_owned_notebooks_carry_the_kernelspec_and_nbdev_clean_keeps_it(tmp_path):
    spec = set_kernelspec.kernelspec()
    assert spec == {"display_name": "python3", "language": "python", "name": "python3"}
    for name in OWNED:
        nb = json.loads((ROOT / "nbs" / f"{name}.ipynb").read_text())
        assert nb["metadata"].get("kernelspec") == spec, name
    nb_path = tmp_path / "x.ipynb"
    nb = json.loads((ROOT / "nbs" / "10c_progress.ipynb").read_text())
    nb["metadata"].pop("kernelspec")
    nb_path.write_text(json.dumps(nb))
    assert set_kernelspec.main([str(nb_path), "--check"]) == 1
    assert set_kernelspec.main([str(nb_path)]) == 0 and set_kernelspec.main([str(nb_path), "--check"]) == 0
    r = subprocess.run([str(Path(sys.executable).parent / "nbdev-clean"), "--fname", str(nb_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(nb_path.read_text())["metadata"]["kernelspec"] == spec


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/install_chromium.sh)")
def test_jupyterlab_opens_a_notebook_without_a_kernel_dialog(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    nb = json.loads((ROOT / "nbs" / "10c_progress.ipynb").read_text())
    nb["cells"] = [{"cell_type": "markdown", "id": "m1", "metadata": {}, "source": ["# Opened in the lab"]},
                   {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None, "outputs": [],
                    "source": ["answer_from_the_lab = 6 * 7"]}]
    (nbs / "probe.ipynb").write_text(json.dumps(nb))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jupyter = Path(sys.executable).parent / "jupyter"
    cmd = [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--notebook-dir={nbs}",
           "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0: cmd.append("--allow-root")
    lab = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")})
    try:
        import urllib.request
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=1)
                break
            except OSError: time.sleep(0.5)
        else: raise AssertionError("JupyterLab did not start")
        with tempfile.TemporaryDirectory() as profile:
            r = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                                "--window-size=1280,900", "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw",
                                "--dump-dom", f"http://127.0.0.1:{port}/lab/tree/probe.ipynb"],
                               capture_output=True, text=True, timeout=240)
        dom = r.stdout
        (Path(tempfile.gettempdir()) / "tradingrl-lab-dom.html").write_text(dom)   # for a failing run
        assert "jp-Notebook" in dom and "answer_from_the_lab" in dom, dom[-3000:]
        assert "Opened in the lab" in dom                     # the markdown cell is rendered
        import re
        assert not re.search(r'class="[^"]*\bjp-Dialog\b', dom), "a dialog is open"   # e.g. "Select Kernel"
        kernel = re.search(r'class="[^"]*jp-KernelName[^"]*"[^>]*>\s*<jp-button[^>]*aria-label="([^"]*)"', dom)
        assert kernel and kernel.group(1) not in ("", "No Kernel", "Select Kernel"), "the notebook is not on a kernel"
    finally:
        lab.terminate()
        try: lab.wait(timeout=30)
        except subprocess.TimeoutExpired: lab.kill()
