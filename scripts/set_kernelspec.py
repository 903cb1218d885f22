"""Give notebooks the project's Jupyter kernelspec, so that JupyterLab opens them on the project's
kernel at once instead of asking which kernel to use.

    .venv/bin/python scripts/set_kernelspec.py [NOTEBOOK_OR_FOLDER ...] [--check]

With no path: every notebook under nbs/. The kernel is settings.ini's `kernel_name` (`python3`, the
kernel `scripts/setup.sh` installs inside .venv). The kernelspec is written in the form `nbdev-clean`
keeps (`display_name` equal to `name`), so cleaning leaves it alone. `--check` changes nothing and
exits 1 when a notebook lacks it.
"""
from __future__ import annotations

import configparser
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def kernelspec() -> dict:
    "The project's kernelspec, from settings.ini (kernel_name, default python3)."
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    name = cfg.get("workbench", "kernel_name", fallback="python3").strip() or "python3"
    return {"display_name": name, "language": "python", "name": name}


def notebooks(args: list[str]) -> list[Path]:
    paths = [Path(a) for a in args] or [ROOT / "nbs"]
    out = []
    for p in paths:
        if p.is_dir(): out += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.suffix == ".ipynb" and p.is_file(): out.append(p)
        else: raise SystemExit(f"set_kernelspec: {p}: not a notebook or a folder")
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    spec, bad = kernelspec(), []
    for nb_path in notebooks([a for a in argv if a != "--check"]):
        try: nb = json.loads(nb_path.read_text(encoding="utf-8"))
        except ValueError as e: raise SystemExit(f"set_kernelspec: {nb_path}: not valid JSON ({e})")
        if nb.get("metadata", {}).get("kernelspec") == spec: continue
        bad.append(nb_path)
        if not check:
            nb.setdefault("metadata", {})["kernelspec"] = spec
            nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for p in bad: print(f"{'missing kernelspec' if check else 'set kernelspec'}: {p}")
    return 1 if check and bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
