"""Generate README.md from nbs/index.ipynb (markdown cells verbatim, code cells as fenced blocks;
outputs and `#| hide` cells left out; the line `<!-- findings-summary -->` becomes the verdict counts of
results/findings.json). `--check` exits 1 when README.md is stale."""
import json
import sys
from collections import Counter
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n"


SUMMARY_MARK = "<!-- findings-summary -->"
VERDICT_ORDER = ("holds", "smaller than claimed", "refuted", "inconclusive", "not testable")


def findings_summary(path: Path = ROOT / "results" / "findings.json") -> str:
    "One sentence of verdict counts from the stored findings, raw and after Holm's correction."
    if not path.exists(): return "No findings are stored yet (`tradingrl findings` writes them)."
    found = json.loads(path.read_text(encoding="utf-8"))
    count = lambda key: ", ".join(f"{n} {v}" for v in VERDICT_ORDER if (n := Counter(f.get(key) for f in found)[v]))
    return (f"**Today ({len(found)} claims measured, from `results/findings.json`):** {count('verdict')}; after Holm's "
            f"correction over all of them: {count('holm_verdict')}.")


def render(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    nb = nbformat.read(nb_path, as_version=4)
    parts = []
    for cell in nb.cells:
        src = cell.source.strip()
        if not src: continue
        if cell.cell_type == "markdown":
            parts.append(src.replace(SUMMARY_MARK, findings_summary()))
        elif cell.cell_type == "code":
            lines = src.splitlines()
            if any(l.strip().replace(" ", "") in ("#|hide", "#|export") for l in lines if l.startswith("#|")): continue
            body = "\n".join(l for l in lines if not l.startswith("#|")).strip()
            if body: parts.append(f"```python\n{body}\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main(argv):
    text, readme = render(), ROOT / "README.md"
    if "--check" in argv:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            print("README.md differs from what nbs/index.ipynb generates", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
