"""Step time of the gradient machinery against torch's Adam, in one run, printed as ratios.

    .venv/bin/python benchmarks/bench_optim.py            # ~1-2 minutes on 2 shared cores
    .venv/bin/python benchmarks/bench_optim.py --quick    # a few seconds, for a smoke test

Model: a 64-512-512-512-64 MLP (591,424 parameters) with the gradients of one minibatch. Cases (one optimizer
step each, on its own copy of the model):

* `adam_foreach`, `adam_fused`: torch.optim.Adam(foreach=True) and Adam(fused=True), the peers;
* `normal_floor`: a bare `normal_()` over all parameters with a generator, the sampling every noisy optimizer pays;
* `adaptive_upgd`: AdaptiveUPGD (adaptive noise, the default torch-operations path, torch's fused Adam kernel inside),
  `adaptive_upgd_fixed`: with fixed noise; `adaptive_upgd_compiled`: the opt-in compiled two-pass CPU kernel of
  tradingrl_nb.upgd_kernel (kernel="compiled"; left out where it cannot be had, e.g. no C compiler);
* `upgd`: UPGD; `upgd_loop`: the same rule loop-per-tensor as the paper's code (UPGDLoop);
* `vgs`: VarianceGradientScaler.scale_gradients() + step(), with the factor k < 1 (it really scales);
* `first_step_s` (printed, not a ratio): construction and first step of a fresh AdaptiveUPGD in a fresh process, in
  seconds, after a first Adam there (the first torch optimizer of a process pays the import of torch._dynamo, seconds
  on its own): the default, then kernel="compiled" with an empty kernel cache (the kernel is compiled in that step)
  and once more with the cache the first one filled (it is only checked and loaded).

Rounds are interleaved (every case once per round) so that load from other jobs hits all cases alike; each case's
time is the median over rounds. Single-threaded by default: on a small shared machine intra-op threads contend and
turn timings into noise (`--threads 0` keeps torch's default). Goals (issues 3 and 14):
AdaptiveUPGD - floor <= 1.5x Adam(foreach); UPGD >= 1.5x faster than loop-per-tensor; VGS <= 0.75x Adam(foreach).
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tradingrl_nb.adaptive_upgd import AdaptiveUPGD  # noqa: E402
from tradingrl_nb.upgd import UPGD  # noqa: E402
from tradingrl_nb.upgd_reference import UPGDLoop  # noqa: E402
from tradingrl_nb.upgd_kernel import kernel_status, load_kernel     # noqa: E402
from tradingrl_nb.vgs import VarianceGradientScaler                  # noqa: E402

SIZES = (64, 512, 512, 512, 64)


def make_model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = []
    for a, b in zip(SIZES[:-1], SIZES[1:]): layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers[:-1]).to(device)
    x, y = torch.randn(256, SIZES[0], device=device), torch.randn(256, SIZES[-1], device=device)
    (model(x) - y).pow(2).mean().backward()
    return model


def cases(device: torch.device) -> dict:
    "name -> zero-argument callable doing one step; each case owns its model copy."
    out = {}
    def add(name, build):
        model = make_model(device)
        out[name] = build(list(model.parameters()))
    add("adam_foreach", lambda ps: torch.optim.Adam(ps, lr=1e-4, foreach=True).step)
    add("adam_fused", lambda ps: torch.optim.Adam(ps, lr=1e-4, fused=True).step)
    n = sum(p.numel() for p in make_model(device).parameters())
    buf, gen = torch.empty(n, device=device), torch.Generator(device=device).manual_seed(0)
    out["normal_floor"] = lambda: buf.normal_(generator=gen)
    add("adaptive_upgd", lambda ps: AdaptiveUPGD(ps, seed=0).step)
    add("adaptive_upgd_fixed", lambda ps: AdaptiveUPGD(ps, adaptive_noise=False, seed=0).step)
    if device.type == "cpu" and load_kernel() is not None:   # opt-in: only where it can be had
        add("adaptive_upgd_compiled", lambda ps: AdaptiveUPGD(ps, seed=0, kernel="compiled").step)
    elif device.type == "cpu": print(f"adaptive_upgd_compiled left out: {kernel_status()['error']}")
    add("upgd", lambda ps: UPGD(ps, seed=0).step)
    add("upgd_loop", lambda ps: UPGDLoop(ps, seed=0).step)
    def vgs_case(ps):
        """VGS with noisy statistics and alpha set so that it really scales, by k ~ 0.995 (the cost does not depend on
        k as long as k < 1; the gradients shrink by only ~0.3x over a whole run, so they need no restoring)."""
        # the seeds' absolute reference, k = 1 / (1 + alpha * nv): it stays below 1 over the whole run, so every step
        # scales. The default reference compares nv with a baseline that follows these constant gradients, so k would
        # return to 1 and the multiply be skipped; the per-element work is the same for both.
        vgs = VarianceGradientScaler(ps, warmup_steps=0, reference="absolute")
        base = [p.grad.clone() for p in ps]
        gen = torch.Generator(device=device).manual_seed(1)
        for _ in range(20):
            for p, g in zip(ps, base): p.grad = g + g.abs().mean() * torch.randn(g.shape, generator=gen, device=device)
            vgs.step()
        for p, g in zip(ps, base): p.grad = g
        vgs.alpha = 0.005 / vgs.get_normalized_variance()
        assert 0.99 < vgs.get_scaling_factor() < 1.0
        def step():
            vgs.scale_gradients()
            vgs.step()
        return step
    add("vgs", vgs_case)
    return out


def measure(fns: dict, rounds: int, reps: int, device: torch.device) -> dict[str, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for f in fns.values():                      # warm up
        for _ in range(3): f()
    sync()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            sync()
            t = time.perf_counter()
            for _ in range(reps): f()
            sync()
            times[k].append((time.perf_counter() - t) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


FIRST_STEP = """
import sys, time, torch
sys.path.insert(0, {root!r})
from benchmarks.bench_optim import make_model
from tradingrl_nb.adaptive_upgd import AdaptiveUPGD
from tradingrl_nb.upgd_kernel import kernel_status
model = make_model(torch.device({device!r}))
torch.optim.Adam(model.parameters(), foreach=True).step()
t0 = time.perf_counter(); AdaptiveUPGD(model.parameters(), seed=0, kernel={kernel!r}).step()
if {device!r} == "cuda": torch.cuda.synchronize()
dt = time.perf_counter() - t0
print(dt, {kernel!r} == "compiled" and kernel_status()["compiled"])
"""


def first_step_in_fresh_process(device: str, cache: str, kernel: str = "auto") -> tuple[float, bool]:
    "Seconds for construction and first step of an AdaptiveUPGD in a new Python process, and whether it compiled."
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "TRADINGRL_KERNEL_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", FIRST_STEP.format(root=root, device=device, kernel=kernel)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), out[-1] == "True"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few rounds: a smoke test, not a measurement")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu (the goals' device) or cuda")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads > 0: torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = args.rounds or (3 if args.quick else 40)
    reps = 2 if args.quick else 5
    model = make_model(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    torch.optim.Adam(model.parameters(), foreach=True).step()
    sync()
    first_adam = time.perf_counter() - t0                # the first torch optimizer of a process imports torch._dynamo
    with tempfile.TemporaryDirectory() as tmp:          # fresh processes: the default; an empty kernel cache, then filled
        cache = str(Path(tmp) / "kernels")                # created private (0700) by the loader
        first_default, _ = first_step_in_fresh_process(args.device, cache)
        try:
            first_cold, compiled_cold = first_step_in_fresh_process(args.device, cache, "compiled")
            first_warm, compiled_warm = first_step_in_fresh_process(args.device, cache, "compiled")
        except subprocess.CalledProcessError:             # no compiler here, or a GPU: the opt-in kernel is not had
            first_cold = first_warm = float("nan")
            compiled_cold = compiled_warm = False
    t = measure(cases(device), rounds, reps, device)
    adam, floor = t["adam_foreach"], t["normal_floor"]
    print(f"device={device} threads={torch.get_num_threads()} rounds={rounds}x{reps} params={sum(p.numel() for p in make_model(device).parameters()):,}")
    print(f"{'case':22s} {'ms/step':>9s} {'x Adam(foreach)':>16s}")
    for k, v in t.items(): print(f"{k:22s} {v * 1e3:9.3f} {v / adam:16.2f}")
    ratios = {"adaptive_upgd_minus_floor_over_adam": (t["adaptive_upgd"] - floor) / adam,
              "adaptive_upgd_fixed_minus_floor_over_adam": (t["adaptive_upgd_fixed"] - floor) / adam,
              **({"adaptive_upgd_compiled_minus_floor_over_adam": (t["adaptive_upgd_compiled"] - floor) / adam}
                 if "adaptive_upgd_compiled" in t else {}),
              "upgd_loop_over_upgd": t["upgd_loop"] / t["upgd"],
              "vgs_over_adam": t["vgs"] / adam,
              "floor_over_adam": floor / adam}
    goals = {"adaptive_upgd_minus_floor_over_adam": ("<=", 1.5), "upgd_loop_over_upgd": (">=", 1.5),
             "vgs_over_adam": ("<=", 0.75)}
    print(f"\nfirst step of a fresh process: Adam(foreach) {first_adam:.3f} s here (the first optimizer imports torch._dynamo); "
          f"then a fresh AdaptiveUPGD {first_default:.3f} s (goal < 2 s); with kernel='compiled' {first_cold:.3f} s with an "
          f"empty kernel cache (compiled: {compiled_cold}), {first_warm:.3f} s with the filled cache (compiled: {compiled_warm})")
    for k, v in ratios.items():
        goal = goals.get(k)
        mark = "" if goal is None else f"   goal {goal[0]} {goal[1]}: " + ("met" if (v <= goal[1] if goal[0] == "<=" else v >= goal[1]) else "NOT met")
        print(f"{k:45s} {v:6.2f}{mark}")
    result = {"device": str(device), "threads": torch.get_num_threads(), "seconds_per_step": t, "ratios": ratios,
              "first_step_s": {"default": first_default, "compiled_empty_cache": first_cold, "compiled_filled_cache": first_warm},
              "first_adam_step_s": first_adam}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
