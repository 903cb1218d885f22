"""Build the documentation site (static HTML, offline) from the notebooks in nbs/ and the package.

    .venv/bin/python scripts/build_docs.py [--out _docs] [--stage _build/docs_stage]

* Notebooks are rendered with the outputs they were committed with (myst-nb, execution off).
  `nbs/index.ipynb` is the home page; every other `nbs/*.ipynb` is a page named like nbdev's
  (`00_data.ipynb` -> `data.html`); `nbs/experiments/*.ipynb` form a section of their own.
  nbdev directive lines (`#| export`, ...) are stripped from the displayed code; `#| hide`
  cells are left out, `#| echo: false` hides a cell's code, `#| output: false` its outputs.
* The API reference has one autodoc page per module of `tradingrl_nb`, found at build time, so
  modules added later appear without touching this script.
* Fails (exit 1) when a module does not import, when a notebook is missing (the home page, or
  the notebook a module says it is generated from), or when Sphinx errors. Warnings are printed,
  never fatal.

Sphinx's configuration is `docs/conf.py`; the staged sources go to a git-ignored folder.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import posixpath
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
PACKAGE = "tradingrl_nb"
DIRECTIVE = re.compile(r"^\s*#\s*\|\s?(.*)$")
GENERATED_FROM = re.compile(r"File to edit: \.\./nbs/(\S+\.ipynb)")
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever an editable install elsewhere points at


class BuildError(Exception):
    "A problem that must fail the docs build."


FINDINGS_PAGE = "claims"                                   # the findings page, drawn from results/findings.json
GENERATED_PAGES = ("index", "datasets", "api", FINDINGS_PAGE)   # pages the build writes itself


def page_name(nb: Path) -> str:
    "nbdev's page name: the notebook's name without its ordering prefix (`00a_config` -> `config`)."
    return re.sub(r"^\d+[a-zA-Z]?_", "", nb.stem)


def _directives(cell) -> tuple[list[str], str]:
    "The leading `#| ...` directives of a code cell and its source without them."
    lines = cell.source.splitlines()
    found = []
    while lines and (m := DIRECTIVE.match(lines[0])):
        found.append(m.group(1).strip())
        lines.pop(0)
    return found, "\n".join(lines).strip("\n")


def _relink(text: str, renames: dict[str, str], docs: dict[str, str] | None = None, where: str = "") -> str:
    """Markdown links to nbs/ notebooks under their new page names (`](10a_cli.ipynb#x)` -> `](cli.ipynb#x)`), and
    links to a page's HTML name (`](pbt_ray.html)`, `](../pbt.html#x)`, as nbdev's site names pages) to its staged
    source when `docs` (staged document -> its file suffix) holds the page, seen from the folder `where`: MyST
    resolves only links to sources; it would turn the others into dead in-page anchors (`#pbt_ray.html`)."""
    def sub(m):
        new = renames.get(m.group(2))
        return f"]({m.group(1) or ''}{new}{m.group(3) or ''})" if new else m.group(0)
    text = re.sub(r"\]\((\.\./|\./)?([\w.-]+\.ipynb)(#[^)\s]*)?\)", sub, text)
    if not docs: return text
    def html(m):
        doc = posixpath.normpath(posixpath.join(where, m.group(1)))
        return f"]({m.group(1)}{docs[doc]}{m.group(2) or ''})" if doc in docs else m.group(0)
    return re.sub(r"\]\(((?:\.\./|\./)*[\w/-][\w./-]*?)\.html(#[^)\s]*)?\)", html, text)


def clean_notebook(nb, renames: dict[str, str] | None = None, docs: dict[str, str] | None = None, where: str = ""):
    """The notebook as displayed: directives stripped, hidden cells dropped, links renamed (see `_relink`; `where` is
    the notebook's staged folder), a kernelspec for highlighting."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            if (renames or docs) and cell.cell_type == "markdown": cell.source = _relink(cell.source, renames or {}, docs, where)
            cells.append(cell)
            continue
        found, src = _directives(cell)
        flags = {d.replace(" ", "").lower() for d in found}
        if flags & {"hide", "include:false"}: continue
        cell.source = src
        tags = list(cell.metadata.get("tags", []))
        if "echo:false" in flags: tags.append("remove-input")
        if "output:false" in flags: cell.outputs = []
        if tags: cell.metadata["tags"] = tags
        if not src.strip() and not cell.outputs: continue  # e.g. the `#| default_exp` cell
        cells.append(cell)
    nb.cells = cells
    nb.metadata.setdefault("kernelspec", KERNELSPEC)
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def discover_modules() -> list[str]:
    "Public modules of the package (none whose name starts with `_`), imported; a broken import fails."
    pkg = importlib.import_module(PACKAGE)
    names = sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, PACKAGE + ".")
                   if not any(part.startswith("_") for part in m.name.split(".")[1:]))
    broken = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            broken.append(f"--- {name}\n{traceback.format_exc()}")
    if broken:
        raise BuildError("modules that do not import (the API reference needs them):\n" + "\n".join(broken))
    return names


def module_data(module: str) -> list[str]:
    "Names in the module's `__all__` that are data (not classes, functions or modules)."
    import inspect
    mod = importlib.import_module(module)
    return [n for n in getattr(mod, "__all__", []) if hasattr(mod, n)
            and not (inspect.isclass(o := getattr(mod, n)) or inspect.isroutine(o) or inspect.ismodule(o))]


def source_notebook(module: str) -> Path | None:
    "The notebook an nbdev-generated module says it is generated from, or None for a hand-written one."
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    if not path.exists(): path = ROOT / Path(*module.split(".")) / "__init__.py"
    m = GENERATED_FROM.search(path.read_text(encoding="utf-8")[:2000]) if path.exists() else None
    return NBS / m.group(1) if m else None


def _toctree(caption: str, entries: list[str]) -> str:
    return "\n".join(["```{toctree}", ":hidden:", ":maxdepth: 1", f":caption: {caption}", "", *entries, "```"])


def stage_results(src: Path, renames: dict[str, str] | None = None, docs: dict[str, str] | None = None) -> tuple[list[str], str | None]:
    """Stage the stored full-size runs (`results/NAME/NAME.ipynb`, executed) as pages `results/NAME`, and the findings
    page (`claims`: forest plot and table; `findings` is the page of the findings module's notebook) from
    `results/findings.json`, which is copied to `results/findings.json` so that links to it resolve (Sphinx serves it as
a download). Returns (stored pages, findings page or None)."""
    results, stored = ROOT / "results", []
    for d in sorted(p for p in results.glob("*") if p.is_dir()):
        nb_path = d / f"{d.name}.ipynb"
        if not nb_path.is_file(): continue
        (src / "results").mkdir(exist_ok=True)
        nbformat.write(clean_notebook(nbformat.read(nb_path, as_version=4), renames, docs, "results"), src / "results" / nb_path.name)
        stored.append(f"results/{d.name}")
    if not (results / "findings.json").is_file(): return stored, None
    (src / "results").mkdir(exist_ok=True)
    shutil.copyfile(results / "findings.json", src / "results" / "findings.json")
    import json
    import matplotlib
    matplotlib.use("Agg")
    from tradingrl_nb import findings as fd
    found = json.loads((results / "findings.json").read_text(encoding="utf-8"))
    if found: fd.plot_findings(found).savefig(src / f"{FINDINGS_PAGE}.png", dpi=110, bbox_inches="tight")
    link = lambda f: f"results/{Path(f['experiment']).parent.name}.ipynb" if f"results/{Path(f['experiment']).parent.name}" in stored else f["experiment"]
    (src / f"{FINDINGS_PAGE}.md").write_text(fd.findings_markdown(found, figure=f"{FINDINGS_PAGE}.png" if found else None, link=link),
                                             encoding="utf-8")
    return stored, FINDINGS_PAGE


def staged_documents(notebooks: list[Path], modules: list[str]) -> dict[str, str]:
    "Every document `stage` writes (path in the staged folder without suffix -> its suffix), for `_relink`."
    docs = {"index": ".ipynb", "api/index": ".rst", **{f"api/{m}": ".rst" for m in modules},
            **{page_name(nb): ".ipynb" for nb in notebooks},
            **{f"experiments/{nb.stem}": ".ipynb" for nb in (NBS / "experiments").glob("*.ipynb")},
            **{f"results/{d.name}": ".ipynb" for d in (ROOT / "results").glob("*") if (d / f"{d.name}.ipynb").is_file()}}
    if (ROOT / "data" / "README.md").is_file(): docs["datasets"] = ".md"
    if (ROOT / "results" / "findings.json").is_file(): docs[FINDINGS_PAGE] = ".md"
    return docs


def stage(src: Path) -> dict:
    "Write the Sphinx sources to `src`: notebooks, the datasets page and the API pages."
    if not (NBS / "index.ipynb").is_file(): raise BuildError(f"missing notebook: {NBS / 'index.ipynb'} (the home page)")
    shutil.rmtree(src, ignore_errors=True)
    (src / "api").mkdir(parents=True)
    modules = discover_modules()
    missing = [f"{nb} (source of {m})" for m in modules if (nb := source_notebook(m)) is not None and not nb.is_file()]
    if missing: raise BuildError("missing notebook(s): " + "; ".join(missing))

    pages, seen = [], {}
    notebooks = [nb for nb in sorted(NBS.glob("*.ipynb")) if nb.name != "index.ipynb"]
    renames = {nb.name: f"{page_name(nb)}.ipynb" for nb in notebooks}
    docs = staged_documents(notebooks, modules)
    for nb_path in notebooks:
        name = page_name(nb_path)
        if name in seen or name in GENERATED_PAGES:
            raise BuildError(f"{nb_path.name} and {seen.get(name, 'a generated page')} would both be the page {name!r}")
        seen[name] = nb_path.name
        nbformat.write(clean_notebook(nbformat.read(nb_path, as_version=4), renames, docs), src / f"{name}.ipynb")
        pages.append(name)
    experiments = []
    for nb_path in sorted((NBS / "experiments").glob("*.ipynb")):
        (src / "experiments").mkdir(exist_ok=True)
        nbformat.write(clean_notebook(nbformat.read(nb_path, as_version=4), renames, docs, "experiments"), src / "experiments" / nb_path.name)
        experiments.append(f"experiments/{nb_path.stem}")

    stored, findings_page = stage_results(src, renames, docs)

    reference = []
    if (ROOT / "data" / "README.md").is_file():
        shutil.copyfile(ROOT / "data" / "README.md", src / "datasets.md")
        reference.append("datasets")
    nb_of = {m: source_notebook(m) for m in modules}
    page_of = {m: page_name(nb) for m, nb in nb_of.items() if nb is not None and nb.parent == NBS and nb.name != "index.ipynb"}
    for m in modules:
        lines = [m, "=" * len(m), ""]
        if m in page_of: lines += [f"Generated from the notebook :doc:`../{page_of[m]}`.", ""]
        data = module_data(m)  # Sphinx 9's automodule leaves out module-level data without a doc comment
        lines += [f".. automodule:: {m}", *([f"   :exclude-members: {', '.join(data)}"] if data else []), ""]
        lines += [line for d in data for line in (f".. autodata:: {m}.{d}", "")]
        (src / "api" / f"{m}.rst").write_text("\n".join(lines), encoding="utf-8")
    (src / "api" / "index.rst").write_text("\n".join([
        "API reference", "=============", "",
        f"Every public module of the ``{PACKAGE}`` package, generated from the notebooks by ``nbdev-export``.", "",
        ".. autosummary::", "", *[f"   {m}" for m in modules], "",
        ".. toctree::", "   :hidden:", "", *[f"   {m}" for m in modules], ""]), encoding="utf-8")
    reference.append("api/index")

    index = clean_notebook(nbformat.read(NBS / "index.ipynb", as_version=4), renames, docs)
    trees = [_toctree("Findings", [findings_page])] if findings_page else []
    trees.append(_toctree("Notebooks", pages))
    if experiments: trees.append(_toctree("Experiments", experiments))
    if stored: trees.append(_toctree("Stored full-size runs", stored))
    trees.append(_toctree("Reference", reference))
    index.cells.append(nbformat.v4.new_markdown_cell("\n\n".join(trees)))
    nbformat.write(index, src / "index.ipynb")
    return dict(pages=pages, experiments=experiments, modules=modules, stored=stored, findings=findings_page)


def build(out: Path, stage_dir: Path, quiet: bool = False) -> dict:
    "Stage the sources and run Sphinx; returns what was built."
    out, stage_dir = out.resolve(), stage_dir.resolve()
    if out.exists() and any(out.iterdir()) and not (out / ".buildinfo").exists():
        raise BuildError(f"{out} exists, is not empty and is not a previous docs build: not overwriting it")
    t0 = time.time()
    info = stage(stage_dir / "src")
    html = stage_dir / "html"  # myst-nb writes its images next to the output folder: keep them in the stage
    shutil.rmtree(html, ignore_errors=True)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(ROOT / "docs"), "-d", str(stage_dir / "doctrees"),
           "--keep-going", str(stage_dir / "src"), str(html)]
    if quiet: cmd.insert(3, "-q")
    r = subprocess.run(cmd, cwd=stage_dir)
    if r.returncode != 0: raise BuildError(f"sphinx-build failed (exit {r.returncode})")
    if not (html / "index.html").is_file(): raise BuildError(f"sphinx-build wrote no {html / 'index.html'}")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(html), str(out))
    info["seconds"] = round(time.time() - t0, 1)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "_docs", help="where the HTML site goes (default: _docs)")
    ap.add_argument("--stage", type=Path, default=ROOT / "_build" / "docs_stage",
                    help="scratch folder for the staged sources (default: _build/docs_stage, git-ignored)")
    ap.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors from Sphinx")
    args = ap.parse_args(argv)
    try:
        info = build(args.out, args.stage, quiet=args.quiet)
    except BuildError as e:
        print(f"docs build FAILED: {e}", file=sys.stderr)
        return 1
    print(f"docs: {len(info['pages']) + 1} notebook pages, {len(info['experiments'])} experiment notebooks, "
          f"{len(info['modules'])} API modules -> {args.out.resolve() / 'index.html'} ({info['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
