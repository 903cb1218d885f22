"""Run one benchmark case in a fresh Python process (clean memory and thread state) and read its JSON result."""
import json
import subprocess
import sys


def run_worker(script: str, args: dict, skip=("worker", "quick")) -> dict:
    "Re-run `script --worker --key=value ...` and return the JSON object on its last stdout line."
    cmd = [sys.executable, script, "--worker"] + [f"--{k.replace('_', '-')}={v}" for k, v in args.items() if k not in skip]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode: raise RuntimeError(f"{args.get('algo', script)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def recurrent_ppo_parser(description: str, algo: str):
    "The argparse parser with the training configuration that bench_ppo and bench_sappo share (same defaults)."
    import argparse
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small run (smoke test)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--algo", default=algo, help=argparse.SUPPRESS)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--n-steps", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lstm", type=int, default=64, help="LSTM hidden size (both recurrent algorithms)")
    p.add_argument("--seq-len", type=int, default=64, help="DistributionalPPO sequence_length")
    p.add_argument("--window", type=int, default=1, help="TradingVecEnv feature window (observation size 9 * window + 3)")
    return p
