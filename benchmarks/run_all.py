"""Run every benchmark in this folder, one after another (`make bench`; `--quick` for a smoke run).
Each prints ratios against a peer measured in the same run; absolute times on a shared machine are noise."""
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_env.py", "bench_optim.py", "bench_ppo.py", "bench_sappo.py", "bench_population.py", "bench_learning.py"]


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    failed = []
    for name in BENCHMARKS:
        print(f"\n===== {name} {' '.join(args)}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / name), *args])
        print(f"===== {name}: exit {rc}, {time.perf_counter() - t:.0f} s", flush=True)
        if rc: failed.append(name)
    if failed: print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
