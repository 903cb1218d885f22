"""A research workbench for risk-aware reinforcement learning on markets

Modules:

- `tradingrl_nb.data`: Real daily index data shipped with the package's dependencies, a strict loader for your own CSV files, causal features, date splits, and synthetic regime-switching markets."""

__version__ = "0.0.1"
