"""The engine runs any method (:mod:`mambaad_lib.methods`): one pipeline for training,
evaluation, checkpoints and results files.

``config`` (run configuration, profiles and the rule that resolves them), ``runs`` (run ids,
folders, locks), ``seeding``, ``checkpoint`` (file format, safe reading), ``trainer`` (the
step loop, exact resumption), ``evaluate`` (maps, metrics, timing, example figures),
``results`` (schema, provenance, reading), ``runner`` (what ``mambaad train``/``evaluate``
do), ``predictor`` (a trained model on users' images, in Python), ``images`` (reading them,
the model's geometry forward and back), ``calibration`` (thresholds stored with the model),
``predict`` (``mambaad predict``), ``export`` (ONNX and torch.export), ``release`` (the
authors' weights as a checkpoint), ``figures`` (heat-map overlays).
"""
from mambaad_lib.engine.config import ConfigError, RunConfig, load_config
from mambaad_lib.engine.results import load_results, results_table

__all__ = ["ConfigError", "RunConfig", "load_config", "load_results", "results_table"]
