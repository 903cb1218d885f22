"""A research workbench for risk-aware reinforcement learning on markets

Modules:

- `tradingrl_nb.adaptive_upgd`: UPGD with Adam moments and noise that enters where the gradient does, sized by the gradient: its noise-to-signal ratio stays constant when VGS scales the gradients down.
- `tradingrl_nb.backtest`: Run any policy (a baseline, a function, or a stable-baselines3 model, recurrent ones included) over held-out dates in `TradingEnv`, deterministically, and report honest metrics next to buy-and-hold.
- `tradingrl_nb.baselines`: The fixed rules every backtest is compared with (buy-and-hold, flat, random, momentum), with stable-baselines3's `predict`, so that anything that runs a model runs them, in either environment.
- `tradingrl_nb.checkpoint`: Pickle-free files for models and populations: tensors as safetensors, everything else as JSON, written atomically.
- `tradingrl_nb.claims`: The seeds' claims as we test them: who said what, in which words, how large, the smallest effect worth having, and whether we test it as written or reframed. One registry, `CLAIMS`, that the [findings](12_findings.ipynb) measure.
- `tradingrl_nb.cli`: `tradingrl list | run | sweep | results | compare | findings`: the experiments runner on the command line.
- `tradingrl_nb.compare`: `tradingrl compare RUN_A RUN_B`: the parameters and metrics in which two run folders differ, one aligned row each, fitted to the terminal. Light: it reads JSON files and imports neither pandas nor torch.
- `tradingrl_nb.config`: `settings.ini` (the researcher's settings), `TRADINGRL_*` overrides, and the `"auto"` device rule.
- `tradingrl_nb.controls`: Does the agent find an edge that is known to be there, and nothing where there is none? The library-default agent on planted-signal markets against their oracles, peers and buy-and-hold, and on a market with no signal.
- `tradingrl_nb.data`: Real daily index data shipped with the package's dependencies, a strict loader for your own CSV files, causal features, date splits, and synthetic regime-switching markets.
- `tradingrl_nb.distributional`: The quantile Huber loss, CVaR from quantiles, the twin-critic rules, and a DSAC-T variance adjustment that keeps the critic's gradient the same size in calm and crash markets.
- `tradingrl_nb.env`: `TradingEnv`, a gymnasium environment for one instrument with honest timing and costs: an order fills after the close it was decided at, costs are charged in the reward, and a position can simply be held.
- `tradingrl_nb.experiments`: The runner: an experiment notebook run with papermill in its own kernel and run folder, its parameters checked first, its failures and interrupts recorded. What a notebook records is in [record](10h_record.ipynb), the results table in [runtable](10i_runtable.ipynb), parameters in [params](10e_params.ipynb), sweeps in [sweeps](10d_sweep.ipynb).
- `tradingrl_nb.fileio`: Atomic writes, our one JSON rule for NaN and infinity, and the small text helpers every module shares. Torch-free.
- `tradingrl_nb.findings`: The seeds' claims, each measured at size over several seeds: one record per claim with the per-seed values, an interval, and a verdict computed from the interval. `tradingrl findings` writes them to `results/findings.json` from the stored runs; the docs' findings page is drawn from that file.
- `tradingrl_nb.health`: Did the run train? Update size, KL, clipping, explained variance, action spread and the VGS factor, summarized per run, with one stated rule for "the policy did not move".
- `tradingrl_nb.market`: A price frame validated once and laid out as the observation matrix both environments read: scaled causal features, every window as one float32 row, the evaluation span, fills, carry and total-return series.
- `tradingrl_nb.params`: Finding experiment notebooks, and reading, typing and checking their parameters before a kernel starts: ranges, choices, dates, presets and parameter files. Light: `tradingrl list` imports no torch.
- `tradingrl_nb.pbt`: A population of agents that train, compare, copy the best and perturb their hyperparameters: ranges, the member contract and the scheduler (`PBTScheduler`); runners on one machine and on Ray Tune.
- `tradingrl_nb.pbt_ppo`: `PPOMember`: the distributional PPO agent as a population member, with its hyperparameters applied wherever they live, its schedules spanning the whole run, and a backtest fitness.
- `tradingrl_nb.pbt_ray`: `run_ray_tune`: the same population members as Ray Tune trainables under Tune's population-based training, on one machine or a cluster.
- `tradingrl_nb.pbt_runner`: `run_population`: a PBT population on one machine, its members in turn or in worker processes (with a per-interval timeout), resume after a crash, failure handling, and the population plots.
- `tradingrl_nb.policy`: An LSTM actor-critic for `DistributionalPPO`: a Gaussian actor for the target position and two quantile critics, built to be run on whole padded sequences (one LSTM call per minibatch).
- `tradingrl_nb.population`: K seeds, arms or PBT members of `DistributionalPPO` trained as one population in one process: one batched policy step for all members in each rollout step, each member's own update, its own random streams, freezing and exploit.
- `tradingrl_nb.ppo`: PPO on stable-baselines3 with an LSTM actor, twin quantile critics, CVaR-aware advantages, return normalization, VGS and AdaptiveUPGD, whole-sequence minibatching and pickle-free checkpoints.
- `tradingrl_nb.ppo_update`: The clipped PPO loss of padded whole sequences with twin quantile critics, and `PPOUpdate`: micro-batched backward, the `target_kl` check, VGS, clipping and the optimizer step in one stated order, non-finite guards and logging.
- `tradingrl_nb.progress`: What a long run is doing, while it runs: steps done of the total, steps per second, time left, and the last validation metrics.
- `tradingrl_nb.record`: `save_metrics`, `save_figure` and `TrainingLog`: the three calls an experiment notebook makes to leave its numbers, figures and learning curves in its run folder. Light: no torch until a model is trained.
- `tradingrl_nb.resume`: A training loop's checkpoint at each evaluation (the model, its optimizer and normalizers, the environments, the LSTM states, every random generator, the curves and the loop's own state) so that `tradingrl run --resume DIR` continues an interrupted run where its last evaluation left it, to the same result on CPU.
- `tradingrl_nb.rollout`: Generalized advantage estimation over `[steps, envs]` arrays, and `SequenceRolloutBuffer`: a rollout stored once and cut into sequences, so that a minibatch runs the LSTM over whole padded sequences in one call.
- `tradingrl_nb.rundir`: A run's folder: locked while the run writes there, never silently reused, its status honest when the process is gone; and the HTML report a reader opens first.
- `tradingrl_nb.runtable`: Every run under a folder as one row: parameters, metrics and, where a run kept its daily returns, the Sharpe interval and its difference from buy-and-hold; and how a metric moves with one parameter across seeds.
- `tradingrl_nb.sappo`: Observation attacks that work through the LSTM over whole sequences (SGLD, PGD, random noise, MAD), the robust KL regularizer of SA-PPO with its epsilon ramp, and an attacked policy for backtests.
- `tradingrl_nb.stats`: Is a backtest's Sharpe ratio skill or luck? The probabilistic and deflated Sharpe ratios, the minimum track record length, and bootstrap intervals that resample the market (and the training seeds).
- `tradingrl_nb.sweep`: A grid of parameter values, one run of an experiment per combination: local worker processes or Ray tasks, each in its own run folder, failures recorded and not fatal.
- `tradingrl_nb.testing`: Small, fast stand-ins the test suite and the demos share: a tiny market and env, a tiny `DistributionalPPO`, a toy PBT member, and a tiny experiment notebook.
- `tradingrl_nb.upgd`: Utility-based perturbed gradient descent: the paper's rule made robust and multi-tensor, on the flat optimizer state (`FlatOptimizer`) that `AdaptiveUPGD` builds on too.
- `tradingrl_nb.upgd_kernel`: An opt-in two-pass C kernel for `AdaptiveUPGD` on the CPU, compiled once per user into a private cache: the utility, its min/max, the Adam moments of the perturbed gradient, the gate and the update, in two sweeps over memory.
- `tradingrl_nb.upgd_reference`: `UPGDLoop` and `AdaptiveUPGDLoop`: the update rules of `UPGD` and `AdaptiveUPGD` written loop-per-tensor, as the paper's public code does, kept as executable references that the fast optimizers are tested against.
- `tradingrl_nb.vec_env`: `TradingVecEnv`: the market of `TradingEnv` stepped for thousands of agents at once as array operations, a stable-baselines3 `VecEnv` with auto-reset whose trajectories are those of a `DummyVecEnv` of `TradingEnv`s.
- `tradingrl_nb.vgs`: Scale the gradient down when it is mostly noise, measuring the noise element by element: per-element EMAs of g and g^2, a robust aggregate that never sorts the model, and state that survives checkpoints without pickling parameters.
- `tradingrl_nb.walkforward`: One walk-forward window's seeds trained as one `Population` in one process: each seed validated, stopped early and frozen on its own, its best checkpoint tested against buy-and-hold, its run folder written as `train_agent` writes it."""

__version__ = "0.0.1"
