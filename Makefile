# tradingrl_nb: every target sets up .venv first (scripts/setup.sh is idempotent).
.PHONY: setup run test lab docs export clean-nbs readme notebooks bench help
help:
	@echo "make run    - set up and run the main job"
	@echo "make test   - set up and run the whole test suite (what CI runs)"
	@echo "make lab    - set up and open JupyterLab on nbs/"
	@echo "make docs   - build the documentation site into _docs/"
	@echo "make bench  - run the benchmarks"
setup:
	@bash scripts/setup.sh
run: setup
	.venv/bin/python -c "from tradingrl_nb.data import main; main()"
test:
	@bash scripts/test.sh
lab: setup
	.venv/bin/jupyter lab --notebook-dir=nbs
export: setup
	.venv/bin/nbdev-export
	.venv/bin/nbdev-clean
readme: setup
	.venv/bin/python scripts/make_readme.py
clean-nbs: setup
	.venv/bin/nbdev-clean
notebooks: setup
	.venv/bin/nbdev-test --save
docs: setup
	.venv/bin/python scripts/build_docs.py
bench: setup
	.venv/bin/python benchmarks/run_all.py
