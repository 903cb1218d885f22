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
