"""Plan the seeds of each findings experiment's full run from a pilot: the stored findings and their runs' wall times.

    python scripts/power_plan.py [--results results] [--budget-minutes 30] [--out results/power_plan.json]

Reads every stored finding (its per-seed values give the spread) and its run's wall time per seed, and writes the
plan of `tradingrl_nb.findings.power_plan`: the seeds each claim needs for its MDE to reach the claimed size, and
the seeds each experiment's full preset should use within the budget. The findings notebook shows the stored plan.
"""
import argparse
import json
import sys
from pathlib import Path

from tradingrl_nb import findings as fd
from tradingrl_nb.fileio import read_json_object, write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="one core's time for one experiment's full run")
    p.add_argument("--out", default=None, help="default: RESULTS/power_plan.json")
    a = p.parse_args(argv)
    root = Path(a.results)
    found = [f for f in json.loads((root / "findings.json").read_text()) if f["verdict"] != "not testable"]
    seconds = {}
    for f in found:
        d = root / Path(f["experiment"]).parent.name
        info, params = read_json_object(d / "run.json"), read_json_object(d / "params.json")
        seconds[Path(f["experiment"]).stem] = float(info["wall_s"]) / len(params["seeds"])
    plan = fd.power_plan(found, seconds, budget_s=60 * a.budget_minutes)
    out = Path(a.out) if a.out else root / "power_plan.json"
    pilots = {f["id"]: dict(commit=f["commit"], per_seed=f["per_seed"]) for f in found}
    write_json(out, dict(budget_minutes=a.budget_minutes, plan=plan.reset_index().to_dict(orient="records"), pilots=pilots))
    print(plan.to_string())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
