"""Search for the smallest model that meets a target accuracy, across network slimming and deep compression.

    result = search(model, Evaluator(val_batches), meta, SearchConfig(target=0.90, strategy="bisect"), "runs/s")
    result.best.size, result.best.ratios, result.path     # the winner's real file

Strategies: `grid` (brute force), `margin` (the paper's three-step heuristic), `bisect` (ours: guarded
bisection with the Evaluator's exact early exit). Every trial is recorded; a killed search resumes, and the
records answer what-if questions exactly (`replay`, `margin_sweep`).
"""

from .candidates import ORDERS, Candidate, Compressor, Pipeline
from .compress import compress
from .plots import plot_margin_sweep, plot_trajectory
from .recipe import STEPS, Recipe, default_recipe
from .replay import RecordedTrials, margin_sweep, replay
from .run import OBJECTIVES, SearchConfig, SearchResult, resolve_target, search
from .strategies import STRATEGIES, bisect_search, grid_search, margin_search
from .trials import BudgetExhausted, Trial, Trials

__all__ = [
    "ORDERS", "Candidate", "Compressor", "Pipeline",
    "OBJECTIVES", "SearchConfig", "SearchResult", "resolve_target", "search",
    "STRATEGIES", "bisect_search", "grid_search", "margin_search",
    "BudgetExhausted", "Trial", "Trials", "compress", "Recipe", "STEPS", "default_recipe",
    "RecordedTrials", "margin_sweep", "replay", "plot_margin_sweep", "plot_trajectory",
]
