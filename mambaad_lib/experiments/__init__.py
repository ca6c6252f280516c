"""The book's experiments: what the notebooks call, through one :class:`Context`.

``context`` (the notebook's parameters, folders, run configs), ``settings`` (how rows are
trained at each profile size), ``grid`` (rows trained through the engine, flattened
results, the open-set grid), ``tables`` (pandas tables beside the paper's; pandas lives
here only), ``inspection`` (predictions, curves, examples and timing of finished runs),
``summary`` (each notebook's summary file), ``provenance`` (weights, masks and protocols
of the published results), ``readme`` (the README's demo table). Figures are :mod:`mambaad_lib.viz`'s.
"""
from mambaad_lib.engine.results import read_record
from mambaad_lib.experiments.context import Context
from mambaad_lib.experiments.grid import (
    OPENSET_GRID_METHODS, cost_row, method_means, openset_grid, result_row, run_grid, run_name, run_row, slug,
    summarize_openset)
from mambaad_lib.experiments.inspection import (
    compare_inference_speed, defect_type_comparison, discriminator_contrast, gas_projection, load_benchmark, load_run,
    map_examples, predict_run, roc_pr_curves, run_models, time_inference, time_models)
from mambaad_lib.experiments.settings import (
    DEFAULT_SEEDS, PROFILE_SETTINGS, SHARED_EXPERIMENT, SIZES, TrainingSettings, training_settings)
from mambaad_lib.experiments.summary import (
    SUMMARY_SCHEMA, SeedStats, best_row_sentence, chance_sentence, comparison_sentence, describe_run, findings,
    plateau_sentence, provenance_sentence, read_summary, seed_stats, write_summary)
from mambaad_lib.experiments.tables import (
    BACKBONE_NAMES, MISSING, SEED_KEYS, benchmark_tables, cost_vs_auroc_points, defect_group_table, defect_type_table,
    for_display, lss_grid, lss_row_label, mean_table, ours_vs_paper, paper_per_category, paper_rows, pct,
    per_class_table, scan_row_label, seed_spread, seed_table, short_backbone)

__all__ = [
    "BACKBONE_NAMES", "Context", "DEFAULT_SEEDS", "MISSING", "OPENSET_GRID_METHODS", "PROFILE_SETTINGS",
    "SEED_KEYS", "SHARED_EXPERIMENT", "SIZES", "SUMMARY_SCHEMA",
    "SeedStats", "TrainingSettings", "benchmark_tables", "best_row_sentence", "chance_sentence",
    "compare_inference_speed", "comparison_sentence", "cost_row", "cost_vs_auroc_points", "defect_group_table",
    "defect_type_comparison", "defect_type_table", "discriminator_contrast", "describe_run", "findings", "for_display",
    "gas_projection", "load_benchmark", "load_run", "lss_grid", "lss_row_label", "map_examples", "mean_table", "method_means",
    "openset_grid", "ours_vs_paper", "paper_per_category", "paper_rows", "pct", "per_class_table", "plateau_sentence",
    "predict_run", "provenance_sentence", "read_record", "read_summary", "result_row", "roc_pr_curves", "run_grid", "run_models",
    "run_name", "run_row", "scan_row_label", "seed_spread", "seed_stats", "seed_table", "short_backbone", "slug", "summarize_openset",
    "time_inference", "time_models", "training_settings", "write_summary",
]
