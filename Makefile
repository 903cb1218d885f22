# tradingrl_nb: every target sets up .venv first (scripts/setup.sh is idempotent).
.PHONY: setup run test lab docs export clean-nbs readme notebooks bench help kernelspec
help:
	@echo "make run    - set up and run the main job"
	@echo "make test   - set up and run the whole test suite (what CI runs)"
	@echo "make lab    - set up and open JupyterLab on nbs/ (notebooks open on the project's kernel)"
	@echo "make docs   - build the documentation site into _docs/"
	@echo "make bench  - run the benchmarks (ratios against peers measured in the same run)"
	@echo "make export - nbdev-export + nbdev-clean after editing notebooks; make notebooks re-runs them with outputs"
setup:
	@bash scripts/setup.sh
run: setup
	.venv/bin/tradingrl run walk_forward --preset full --device auto --output-dir runs/walk_forward-$$(date +%Y%m%d-%H%M%S)
test:
	@bash scripts/test.sh
# JupyterLab refuses root without --allow-root: pass it only when running as root (as in most containers)
JUPYTER ?= .venv/bin/jupyter
lab: setup
	@if [ "$$(id -u)" = 0 ]; then root=--allow-root; else root=; fi; \
	echo "$(JUPYTER) lab --notebook-dir=nbs $$root"; $(JUPYTER) lab --notebook-dir=nbs $$root
export: setup
	.venv/bin/nbdev-export
	.venv/bin/nbdev-clean
kernelspec: setup
	.venv/bin/python scripts/set_kernelspec.py
readme: setup
	.venv/bin/python scripts/make_readme.py
clean-nbs: setup
	.venv/bin/nbdev-clean
notebooks: setup
	.venv/bin/nbdev-test --save
	.venv/bin/nbdev-clean
docs: setup
	.venv/bin/python scripts/build_docs.py
bench: setup
	.venv/bin/python benchmarks/run_all.py
