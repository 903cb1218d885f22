#!/usr/bin/env bash
# The whole test suite, in order; stops at the first failing stage and says which one.
set -uo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin
fail() { echo "FAILED stage: $1" >&2; exit 1; }
stage() { echo; echo "== stage: $1"; }

stage "set-up"
bash scripts/setup.sh || fail "set-up (scripts/setup.sh)"

stage "nbdev-clean (notebooks must already be clean)"
$V/nbdev-clean || fail "nbdev-clean crashed"
if [ -n "$(git status --porcelain -- nbs)" ]; then
  git status --porcelain -- nbs; git diff --stat -- nbs
  fail "nbdev-clean changed notebooks: run 'make clean-nbs' and commit"
fi

stage "nbdev-export (package must match the notebooks)"
$V/nbdev-export || fail "nbdev-export crashed"
if [ -n "$(git status --porcelain --untracked-files=all -- tradingrl_nb nbs/llms.txt)" ]; then
  git status --porcelain --untracked-files=all -- tradingrl_nb
  fail "nbdev-export changed or added files under tradingrl_nb/: export and commit"
fi

stage "ruff (pyflakes rules and one statement per line: the package, tests, benchmarks, scripts)"
$V/ruff check tradingrl_nb tests benchmarks scripts || fail "ruff: fix the findings above (the package's in nbs/, then export)"

stage "README is generated from nbs/index.ipynb"
$V/python scripts/make_readme.py --check || fail "README.md is stale: run 'make readme' and commit"

stage "nbdev-test (notebooks; slow and cuda cells skipped)"
# nbs/experiments is left to pytest (test_experiments runs each experiment with its tiny defaults and checks what it
# records): running them here too ran every one twice (about a minute on 2 cores).
$V/nbdev-test --timing --skip-folder-re '^([_.]|experiments$)' || fail "nbdev-test"

stage "pytest tests/ (one worker per core: pytest-xdist)"
# -n auto: one worker per core (at most 8: each worker holds torch, some start Jupyter kernels or Ray); --dist
# loadgroup keeps the modules listed in tests/conftest.py on one worker each. Arguments are passed on (e.g.
# `scripts/test.sh -n 0` runs in one process, `-k upgd` selects).
$V/python -m pytest tests/ -q -p no:cacheprovider -n auto --maxprocesses 8 --dist loadgroup "$@"
rc=$?
if [ $rc -eq 5 ]; then
  fail "pytest collected no tests: a test suite that runs nothing is a failure here"
elif [ $rc -ne 0 ]; then
  fail "pytest (exit $rc)"
fi
echo; echo "== all stages passed"
