"""Training, evaluation, checkpoints and results files (method-agnostic).

``config`` (run configuration and profiles), ``seeding``, ``io`` (atomic writes),
``checkpoint``, ``trainer`` (the loop, exact resumption), ``evaluate`` (maps, metrics,
timing, example figures), ``results`` (schema, writing, loading), ``runner`` (what one
``mambaad`` command does), ``figures`` (heat-map overlays).
"""
from mambaad_lib.engine.config import ConfigError, RunConfig, load_config
from mambaad_lib.engine.results import load_results, results_table

__all__ = ["ConfigError", "RunConfig", "load_config", "load_results", "results_table"]
