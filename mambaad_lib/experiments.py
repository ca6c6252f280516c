"""Grid-running helpers for the book's notebooks: one configuration in, one result row out.

A notebook describes its experiment as a *grid* of rows (plain dicts of ``model.*`` options
plus a ``label``) and a *profile* (``smoke``, ``demo``, ``paper``). This module turns that
into engine runs and tidy rows:

- :data:`PROFILE_SETTINGS` / :func:`training_settings`: how rows are trained under each
  profile (image size, classes, images per class, epochs, base model), per kind of notebook;
- :func:`row_config`: a validated :class:`~mambaad_lib.engine.config.RunConfig` for one row,
  writing to ``<results_root>/<notebook>/<profile>/``;
- :func:`run_row`: train + evaluate through :func:`mambaad_lib.engine.runner.train` (or reuse
  a finished run with the same config) and return a :func:`result_row`;
- :func:`cost_row`: parameters and FLOPs of an architecture without training it;
- :func:`paper_rows`, :func:`percent`: the paper's tables as floats, ours in percent;
- :func:`write_summary`, :func:`read_summary`: the notebook's own summary JSON (atomic, with
  the environment), the file the book's tables and figures are drawn from.

Nothing here trains models by itself: the engine does; the notebooks only call these.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mambaad_lib.engine.config import RunConfig, config_to_dict, load_config
from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.engine.results import environment, results_path
from mambaad_lib.metrics import METRIC_KEYS
from mambaad_lib.paper import paper_table

PROFILES: tuple[str, ...] = ("smoke", "demo", "paper")
SUMMARY_SCHEMA = "mambaad-companion/notebook-summary"
# The paper's backbone names -> ours (encoder_spec keys).
BACKBONE_NAMES: dict[str, str] = {"ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50",
                                  "WideResNet50": "wide_resnet50_2"}


@dataclass(frozen=True)
class TrainingSettings:
    """How every trained row of one notebook is run under one profile.

    ``base_profile`` is the YAML profile (``configs/``) the rows start from; the other fields
    override it. ``model`` holds the base architecture that grid rows modify (e.g. the
    ablation notebooks vary the scan of this model). ``note`` says why, for the book.
    """

    base_profile: str
    image_size: int
    classes: tuple[str, ...] | None
    train_per_class: int | None
    test_per_class: int | None
    epochs: int
    batch_size: int
    model: Mapping[str, Any] = field(default_factory=dict)
    num_examples: int = 0
    evaluate_untrained: bool = False
    note: str = ""

    def overrides(self) -> dict[str, Any]:
        """Dotted config keys these settings set."""
        values: dict[str, Any] = {
            "data.image_size": self.image_size, "data.crop_size": self.image_size,
            "data.classes": list(self.classes) if self.classes else None,
            "data.train_per_class": self.train_per_class, "data.test_per_class": self.test_per_class,
            "train.epochs": self.epochs, "train.batch_size": self.batch_size,
            "train.checkpoint_every": self.epochs, "train.evaluate_untrained": self.evaluate_untrained,
            "eval.num_examples": self.num_examples,
        }
        values.update({f"model.{key}": _plain(value) for key, value in self.model.items()})
        return values

    def describe(self) -> str:
        """One line for the notebook page: what every trained row sees."""
        classes = ", ".join(self.classes) if self.classes else "all classes"
        per_class = (f"{self.train_per_class or 'all'} normal training / {self.test_per_class or 'all'} test "
                     "images per class")
        model = ", ".join(f"{key}={_plain(value)}" for key, value in self.model.items())
        text = (f"base profile `{self.base_profile}`; {self.image_size}x{self.image_size} images; {classes}; "
                f"{per_class}; {self.epochs} epochs at batch {self.batch_size}")
        return text + (f"; base model {model}" if model else "") + (f" ({self.note})" if self.note else "")


# Test splits are never capped: the engine's cap keeps the first images of a class, which
# are all normal in the synthetic benchmark.
_SMOKE = dict(base_profile="smoke", image_size=64, classes=("brick", "coin"), train_per_class=4,
              test_per_class=None, epochs=1, batch_size=4,
              note="checks the pipeline only: the numbers mean nothing")
_ABLATION_DEMO = dict(
    base_profile="demo", image_size=64, classes=("grass", "logo"), train_per_class=12,
    test_per_class=None, epochs=4, batch_size=8,
    model={"backbone": "resnet18", "depths": (1, 1, 1, 1), "local_kernels": (5, 7)},
    note="CPU-sized: random encoder, 64x64 images (decoder scan grids 2x2..16x16), a few epochs; "
         "differences between rows are within seed noise at this size")
_ABLATION_PAPER = dict(
    base_profile="paper", image_size=256, classes=None, train_per_class=None, test_per_class=None, epochs=500,
    batch_size=16, model={"backbone": "resnet34", "depths": (3, 4, 6, 3)},
    note="the paper's ablation setting (MVTec-AD, ImageNet ResNet34, [3,4,6,3])")

# notebook kind -> profile -> settings. ``main``: notebook 01; ``ablation``: 02-04;
# ``synthesis``: MambaAD rows of notebook 05.
PROFILE_SETTINGS: dict[str, dict[str, TrainingSettings]] = {
    "main": {
        "smoke": TrainingSettings(**{**_SMOKE, "num_examples": 2, "evaluate_untrained": True}),
        "demo": TrainingSettings(
            base_profile="demo", image_size=128, classes=("brick", "grass", "retina", "logo"),
            train_per_class=10, test_per_class=None, epochs=6, batch_size=8, num_examples=4,
            evaluate_untrained=True,
            note="configs/demo.yaml's model (random encoder, ResNet18, one HSS block per stage) with half its "
                 "training images and epochs, to fit the book's CPU budget"),
        "paper": TrainingSettings(base_profile="paper", image_size=256, classes=None, train_per_class=None,
                                  test_per_class=None, epochs=500, batch_size=16, num_examples=8,
                                  note="configs/paper.yaml"),
    },
    "ablation": {
        "smoke": TrainingSettings(**{**_SMOKE, "model": {"backbone": "resnet18", "depths": (1, 1, 1, 1),
                                                         "local_kernels": (3,)}}),
        "demo": TrainingSettings(**_ABLATION_DEMO),
        "paper": TrainingSettings(**_ABLATION_PAPER),
    },
    "synthesis": {
        "smoke": TrainingSettings(**_SMOKE),
        "demo": TrainingSettings(
            base_profile="demo", image_size=128, classes=("grass", "logo"), train_per_class=12,
            test_per_class=None, epochs=4, batch_size=8,
            note="random encoder; one texture and one object class"),
        "paper": TrainingSettings(base_profile="paper", image_size=256, classes=None, train_per_class=None,
                                  test_per_class=None, epochs=500, batch_size=16, num_examples=4),
    },
}


def training_settings(kind: str, profile: str) -> TrainingSettings:
    """Settings of notebook ``kind`` (``main``, ``ablation``, ``synthesis``) under ``profile``."""
    if kind not in PROFILE_SETTINGS:
        raise ValueError(f"unknown notebook kind {kind!r}; expected one of {sorted(PROFILE_SETTINGS)}")
    if profile not in PROFILE_SETTINGS[kind]:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {profile!r}")
    return PROFILE_SETTINGS[kind][profile]


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (YAML/JSON friendly)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def slug(text: str) -> str:
    """A file-name-safe run id from a row label (``"R34 [3,4,6,3]"`` -> ``r34-3-4-6-3``)."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not cleaned:
        raise ValueError(f"row label {text!r} has no letters or digits to name its run")
    return cleaned


# ---- data ------------------------------------------------------------------------------


def ensure_dataset(dataset_root: str | Path, dataset_name: str, profile: str) -> Path:
    """The meta file of ``dataset_name``; a missing synthetic dataset is generated first.

    A name other than the profile's own synthetic dataset is generated with the standard
    benchmark's settings (7 classes, 60 + 40 images, 256x256), so that a later run never
    mistakes a tiny dataset for the benchmark.

    Raises:
        FileNotFoundError: a real dataset (name not starting with ``synthetic``) is missing.
    """
    from mambaad_lib.data.synthetic import make_synthetic_dataset
    from mambaad_lib.data import meta_path
    from mambaad_lib.engine.config import SyntheticConfig

    meta = meta_path(dataset_root, dataset_name)
    if meta.is_file():
        return meta
    if not dataset_name.startswith("synthetic"):
        raise FileNotFoundError(f"dataset {dataset_name!r} has no meta file {str(meta)!r}; convert it first with "
                                f"'mambaad prep <dataset> SRC --root {dataset_root}' (see the datasets chapter)")
    profile_config = load_config(profile)
    synthetic = profile_config.synthetic if profile_config.data.name == dataset_name else SyntheticConfig()
    return make_synthetic_dataset(dataset_root, name=dataset_name, seed=synthetic.seed,
                                  image_size=synthetic.image_size, n_train=synthetic.n_train,
                                  n_test=synthetic.n_test, classes=synthetic.classes)


# ---- one row ---------------------------------------------------------------------------


def row_config(settings: TrainingSettings, row: Mapping[str, Any], *, notebook: str, profile: str,
               dataset_root: str, dataset_name: str, device: str = "cpu", seed: int = 0,
               results_root: str = "results", runs_root: str = "runs", method: str = "mambaad",
               overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The run config of one grid row.

    Args:
        settings: the notebook's :class:`TrainingSettings` for ``profile``.
        row: ``model.*`` options of the row (keys without the ``model.`` prefix); a ``label``
            key is ignored here.
        notebook: the notebook's stem (the results experiment name).
        overrides: further dotted keys (e.g. another method's options), applied last.
    Raises:
        ConfigError: an option the method does not have (the message names it).
    """
    values = settings.overrides()
    if not _is_mambaad(method):  # another method's model section: keep only the data/train settings
        values = {key: value for key, value in values.items() if not key.startswith("model.")}
    values.update({f"model.{key}": _plain(value) for key, value in row.items() if key != "label"})
    values.update({"experiment": notebook, "profile": profile, "method": method, "seed": seed, "device": device,
                   "data.root": str(dataset_root), "data.name": dataset_name,
                   "paths.results_dir": str(results_root), "paths.runs_dir": str(runs_root)})
    values.update(dict(overrides or {}))
    base = load_config(settings.base_profile)
    base_values = config_to_dict(base)
    if method != base.method and not (_is_mambaad(method) and _is_mambaad(base.method)):
        base_values.pop("model", None)
    return load_config(None, values, base=base_values)


def _is_mambaad(method: str) -> bool:
    """MambaAD and its variants share the model options (``mambaad``, ``mambaad_las``)."""
    return method == "mambaad" or method.startswith("mambaad_")


def _reusable(path: Path, config: RunConfig) -> dict[str, Any] | None:
    """The stored record at ``path`` when it was trained with exactly ``config``."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record if record.get("config") == json.loads(json.dumps(config_to_dict(config))) else None


def run_row(config: RunConfig, label: str, reuse: bool = True, progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one configuration; returns its :func:`result_row`.

    The run id is the label's :func:`slug` plus the seed. With ``reuse`` a results file of the
    same id written with an identical config is read back instead of training again (so a
    notebook can be re-executed to redraw its figures).
    """
    from mambaad_lib.engine.runner import train

    run_id = f"{slug(label)}-seed{config.seed}"
    path = results_path(config.paths.results_dir, config.experiment, config.profile, run_id)
    record = _reusable(path, config) if reuse else None
    if record is None:
        record = train(config, run_id=run_id, progress=progress).record
        record["_path"] = str(path)
    else:
        record["_path"] = str(path)
    return result_row(record, label)


def result_row(record: Mapping[str, Any], label: str) -> dict[str, Any]:
    """A flat row from one engine results record: metrics of both protocols in [0, 1], costs, times."""
    model = record.get("model") or {}
    parameters = model.get("parameters") or {}
    flops = model.get("flops") or {}
    training = record.get("training") or {}
    evaluation = record.get("evaluation") or {}
    row: dict[str, Any] = {
        "label": label, "trained": True, "run_id": record["run_id"], "results_file": record.get("_path"),
        "method": record.get("method"), "architecture": model.get("architecture"),
        "params_m": parameters["total"] / 1e6 if "total" in parameters else None,
        "trainable_m": parameters["trainable"] / 1e6 if "trainable" in parameters else None,
        "flops_g": flops.get("total"), "scan_flops_g": flops.get("scan"),
        "image_size": record["config"]["data"]["crop_size"],
        "train_time_s": training.get("wall_time_s"), "final_loss": training.get("final_loss"),
        "images_per_s": evaluation.get("model_images_per_s"), "scan_backend": record.get("scan_backend"),
        "encoder": (record.get("encoder") or {}).get("encoder_weights"),
    }
    for protocol, values in (record.get("metrics") or {}).items():
        row.update({f"{protocol}.{key}": values["mean"].get(key) for key in METRIC_KEYS})
    return row


def cost_row(label: str, image_size: int = 256, **model: Any) -> dict[str, Any]:
    """Parameters (M) and GFLOPs of ``build_mambaad(**model)`` at ``image_size``, without training.

    The model is built on the meta device (no memory, no initialisation), so even the
    WideResNet50 model costs a fraction of a second.
    """
    import torch

    from mambaad_lib.models import build_mambaad
    from mambaad_lib.models.costs import count_flops, count_parameters

    with torch.device("meta"):
        network = build_mambaad(image_size=image_size, **{key: _tuple(value) for key, value in model.items()})
    parameters = count_parameters(network)
    flops = count_flops(network, image_size=image_size)
    return {"label": label, "trained": False, "params_m": parameters["total"] / 1e6,
            "trainable_m": parameters["trainable"] / 1e6, "flops_g": flops["total"], "scan_flops_g": flops["scan"],
            "image_size": image_size}


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def run_grid(rows: Sequence[Mapping[str, Any]], settings: TrainingSettings, trained_labels: Iterable[str],
             progress: bool = True, **config_options: Any) -> list[dict[str, Any]]:
    """Train the rows whose label is in ``trained_labels``; the others get :func:`cost_row` only.

    ``config_options`` go to :func:`row_config` (notebook, profile, dataset_root, ...).
    Trained rows report the parameters/FLOPs of the model actually trained (the profile's
    base model with the row's options, at the profile's image size). Every row also carries
    ``params_m_256``/``flops_g_256``: the row's options on the paper's model (ResNet34
    [3,4,6,3], kernels 5/7, unless the row says otherwise) at 256x256, the numbers to put
    beside the paper's.
    """
    from tqdm.auto import tqdm

    trained = set(trained_labels)
    unknown = trained - {row["label"] for row in rows}
    if unknown:
        raise ValueError(f"rows to train {sorted(unknown)} are not in the grid {[row['label'] for row in rows]}")
    model_keys = dict(settings.model)
    results = []
    for row in tqdm(rows, desc="grid", unit="row", disable=not progress):
        options = {key: value for key, value in row.items() if key != "label"}
        model = {**model_keys, **options}
        paper_size = cost_row(row["label"], 256, **options)
        if row["label"] in trained:
            result = run_row(row_config(settings, row, **config_options), row["label"])
        else:
            result = dict(paper_size)
        result["params_m_256"], result["flops_g_256"] = paper_size["params_m"], paper_size["flops_g"]
        result["model"] = _plain(model)
        results.append(result)
    return results


# ---- paper values and tables -----------------------------------------------------------


def paper_rows(name: str, **equal: str) -> list[dict[str, Any]]:
    """Rows of the paper's table ``name`` whose columns equal ``equal``; numbers as floats."""
    rows = []
    for row in paper_table(name):
        if all(row.get(key) == value for key, value in equal.items()):
            rows.append({key: _number(value) for key, value in row.items()})
    return rows


def _number(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def percent(rows: Sequence[Mapping[str, Any]], protocol: str = "standard",
            keys: Sequence[str] = METRIC_KEYS, digits: int = 1) -> list[dict[str, Any]]:
    """Our rows' ``<protocol>.<metric>`` values in percent (the paper's unit), rounded."""
    out = []
    for row in rows:
        values = {}
        for key in keys:
            value = row.get(f"{protocol}.{key}")
            values[key] = None if value is None else round(100 * value, digits)
        out.append({"label": row["label"], **values})
    return out


# ---- the notebook's summary file ---------------------------------------------------------


def output_dir(results_root: str | Path, notebook: str, profile: str) -> Path:
    """``<results_root>/<notebook>/<profile>/`` (created)."""
    folder = Path(results_root) / notebook / profile
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_summary(results_root: str | Path, notebook: str, profile: str, payload: Mapping[str, Any],
                  name: str = "summary") -> Path:
    """Write ``<results_root>/<notebook>/<profile>/<name>.json`` atomically, with provenance.

    The file holds ``schema``, ``notebook``, ``profile``, ``environment`` (versions, git
    commit) and the payload's keys.
    """
    record = {"schema": SUMMARY_SCHEMA, "notebook": notebook, "profile": profile,
              "environment": environment(), **_plain(dict(payload))}
    return atomic_write_json(output_dir(results_root, notebook, profile) / f"{name}.json", record)


def read_summary(results_root: str | Path, notebook: str, profile: str, name: str = "summary") -> dict[str, Any]:
    """What :func:`write_summary` wrote.

    Raises:
        FileNotFoundError: with the notebook that writes it.
    """
    path = Path(results_root) / notebook / profile / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no summary {str(path)!r}: run notebook {notebook} with profile {profile!r} first "
                                f"(mambaad reproduce --profile {profile} --only {notebook})")
    return json.loads(path.read_text(encoding="utf-8"))


def replace_settings(settings: TrainingSettings, **changes: Any) -> TrainingSettings:
    """A copy of ``settings`` with fields changed (``model`` entries are merged)."""
    if "model" in changes:
        changes["model"] = {**settings.model, **changes["model"]}
    return dataclasses.replace(settings, **changes)


# ---- predictions, curves and examples of a finished run ------------------------------------


def predict_run(results_file: str | Path, progress: bool = False) -> tuple[Any, Any]:
    """Reload a trained run (its results file names the checkpoint) and predict its test split.

    Returns:
        (:class:`~mambaad_lib.engine.evaluate.Predictions`, the test dataset).
    Raises:
        FileNotFoundError: the run's checkpoint is gone (checkpoints live in ``runs/``, which
            is not committed; rerun the notebook to recreate it).
    """
    from mambaad_lib.engine.config import config_from_dict
    from mambaad_lib.engine.evaluate import predict_dataset
    from mambaad_lib.engine.runner import build_datasets, load_for_inference

    record = json.loads(Path(results_file).read_text(encoding="utf-8"))
    checkpoint = Path((record.get("training") or {}).get("checkpoint") or record["evaluation"]["checkpoint"])
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} of {str(results_file)!r} does not exist "
                                "(rerun the notebook with reuse disabled to train it again)")
    config = config_from_dict(record["config"])
    method, _ = load_for_inference(checkpoint, config)
    test = build_datasets(config, splits=("test",))["test"]
    return predict_dataset(method, test, config.eval.batch_size, progress=progress), test


def _thin(values: Any, limit: int) -> list[float]:
    """At most ``limit`` evenly spaced points of a curve, always keeping both ends."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    if len(values) <= limit:
        return values.tolist()
    keep = np.unique(np.linspace(0, len(values) - 1, limit).round().astype(int))
    return values[keep].tolist()


def roc_pr_curves(scores: Any, labels: Any, groups: Sequence[str] | None = None,
                  limit: int = 200) -> dict[str, dict[str, Any]]:
    """ROC and precision-recall curves (scikit-learn) of image scores, per group and pooled.

    Args:
        scores (N,), labels (N,) 0/1; groups: a class name per image (None: pooled only).
        limit: points kept per curve (thinned evenly), so the JSON stays small.
    Returns:
        ``{name: {fpr, tpr, precision, recall, auroc, ap}}``; groups without both normal and
        anomalous images are left out. ``"all classes (pooled)"`` pools every image.
    """
    import numpy as np
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    selections = {"all classes (pooled)": np.ones(len(scores), dtype=bool)}
    if groups is not None:
        groups = np.asarray(groups)
        selections.update({str(name): groups == name for name in dict.fromkeys(groups.tolist())})
    curves = {}
    for name, chosen in selections.items():
        y, s = labels[chosen], scores[chosen]
        if not 0 < y.sum() < len(y):
            continue
        fpr, tpr, _ = roc_curve(y, s)
        precision, recall, _ = precision_recall_curve(y, s)
        curves[name] = {"fpr": _thin(fpr, limit), "tpr": _thin(tpr, limit), "precision": _thin(precision, limit),
                        "recall": _thin(recall, limit), "auroc": float(roc_auc_score(y, s)),
                        "ap": float(average_precision_score(y, s))}
    return curves


def map_examples(predictions: Any, dataset: Any, per_class: int = 1) -> dict[str, list[Any]]:
    """Image, ground truth and map of the highest-scored anomalous test images of every class.

    Returns:
        ``{"images": [(H,W,3) in [0,1]], "masks": [(H,W) bool], "maps": [(H,W)], "titles": [...]}``,
        ready for :func:`mambaad_lib.viz.plot_anomaly_grid`.
    """
    import numpy as np

    from mambaad_lib.data import denormalize

    picked = []
    for name in dict.fromkeys(predictions.class_names):
        indices = [i for i, (c, y) in enumerate(zip(predictions.class_names, predictions.labels)) if c == name and y]
        picked += sorted(indices, key=lambda i: -predictions.scores[i])[:per_class]
    examples: dict[str, list[Any]] = {"images": [], "masks": [], "maps": [], "titles": []}
    for index in picked:
        examples["images"].append(denormalize(dataset[index]["image"]).permute(1, 2, 0).numpy())
        examples["masks"].append(predictions.masks[index])
        examples["maps"].append(predictions.maps[index])
        examples["titles"].append(f"{predictions.class_names[index]}: {Path(predictions.image_paths[index]).parent.name}")
    examples["maps"] = [np.asarray(m) for m in examples["maps"]]
    return examples


# ---- timing (efficiency notebook) ----------------------------------------------------------


def time_inference(image_size: int, batch_size: int = 1, repeats: int = 2, scan_backend: str = "auto",
                   device: str = "cpu", seed: int = 0, **model: Any) -> dict[str, Any]:
    """Best-of-``repeats`` seconds of one ``anomaly_map`` call of a random-weight MambaAD.

    One warm-up call precedes the timed ones. Returns ``seconds``, ``images_per_s``, the
    resolved ``scan_backend`` and the model's GFLOPs at this size.
    """
    import time

    import torch

    from mambaad_lib.engine.seeding import seed_everything
    from mambaad_lib.models import build_mambaad
    from mambaad_lib.models.costs import count_flops

    seed_everything(seed)
    network = build_mambaad(image_size=image_size, scan_backend=scan_backend,
                            **{key: _tuple(value) for key, value in model.items()}).to(device).eval()
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    best = float("inf")
    with torch.no_grad():
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            network.anomaly_map(images)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if attempt:  # the first call warms caches and kernels up
                best = min(best, time.perf_counter() - started)
    return {"image_size": image_size, "batch_size": batch_size, "seconds": best,
            "images_per_s": batch_size / best, "scan_backend": network.scan_backend,
            "flops_g": count_flops(network, image_size)["total"]}


def load_benchmark(name: str, folder: str | Path | None = None) -> dict[str, Any] | None:
    """``results/benchmarks/<name>.json`` (written by ``benchmarks/*.py``), or None when absent."""
    from mambaad_lib.utils.resources import PACKAGE_DIR

    path = Path(folder or PACKAGE_DIR.parent / "results" / "benchmarks") / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ---- GLASS feature space (synthesis notebook) -----------------------------------------------


def gas_projection(results_file: str | Path, n_images: int = 4, max_points: int = 600,
                   seed: int = 0) -> dict[str, Any]:
    """Normal, GAS and LAS patch features of a trained GLASS run, projected on 2 principal axes.

    Adapted features of ``n_images`` normal training images of the run's classes are the
    normal set; GAS features come from :func:`~mambaad_lib.synthesis.gas.synthesize_gas` with
    the run's trained discriminator; LAS features are the adapted patches of LAS versions of
    the same images that fall inside the synthesized defects. The principal axes are those of
    the normal set. Returns ``{"points": {name: (n, 2) list}, "scores": {name: mean
    discriminator output}}``.
    """
    import numpy as np
    import torch

    from mambaad_lib.data.transforms import denormalize
    from mambaad_lib.engine.config import config_from_dict
    from mambaad_lib.engine.runner import build_datasets, load_for_inference
    from mambaad_lib.models.glass import patch_labels
    from mambaad_lib.synthesis.gas import synthesize_gas

    record = json.loads(Path(results_file).read_text(encoding="utf-8"))
    config = config_from_dict(record["config"])
    method, _ = load_for_inference(record["training"]["checkpoint"], config)
    train = build_datasets(config, splits=("train",))["train"]
    images = torch.stack([train[i]["image"] for i in range(min(n_images, len(train)))])  # (B,3,H,W)
    rng = np.random.default_rng(seed)
    foregrounds = method._foregrounds(denormalize(images))  # the run's own foreground rule
    las_images, las_masks = method.las(images, rng, foregrounds)  # (B,3,H,W), (B,1,H,W)
    net = method.net.eval()
    with torch.no_grad():
        normal, grid = net.adapted(images.to(method.device))        # (N, D)
        las_all, _ = net.adapted(las_images.to(method.device))      # (N, D)
    inside = patch_labels(las_masks, grid).to(method.device)[:, 0] > 0.5
    gas = synthesize_gas(normal, net.discriminator, config.model.gas,
                         torch.Generator().manual_seed(seed))
    sets = {"normal": normal, "GAS": gas, "LAS (inside defects)": las_all[inside]}
    centre = normal.mean(0, keepdim=True)
    _, _, axes = torch.linalg.svd(normal - centre, full_matrices=False)  # rows: principal axes
    generator = np.random.default_rng(seed)
    points, scores = {}, {}
    with torch.no_grad():
        for name, features in sets.items():
            if len(features) == 0:
                continue
            keep = generator.permutation(len(features))[:max_points]
            chosen = features[torch.as_tensor(keep, device=features.device)]
            points[name] = ((chosen - centre) @ axes[:2].T).cpu().numpy().tolist()
            scores[name] = float(net.discriminator(chosen).mean())
    return {"points": points, "scores": scores, "results_file": str(results_file)}


# ---- tables for the main-results notebook ---------------------------------------------------


def load_record(results_file: str | Path) -> dict[str, Any]:
    """One engine results file (as :func:`mambaad_lib.engine.load_results` reads it)."""
    from mambaad_lib.engine.results import load_results

    records = load_results(results_file)
    if not records:
        raise ValueError(f"{str(results_file)!r} is not a mambaad-companion results file")
    return records[0]


def _percent_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: None if values.get(key) is None else round(100 * values[key], 1) for key in METRIC_KEYS}


def mean_table(record: Mapping[str, Any], paper_dataset: str | None = "MVTec-AD") -> Any:
    """Class means in percent: ours trained/untrained per protocol, then the paper's Table 1 rows.

    Returns a pandas DataFrame indexed by a row name that states the protocol.
    """
    import pandas as pd

    rows = {}
    for key, state in (("metrics", "trained"), ("metrics_untrained", "untrained")):
        for protocol, values in (record.get(key) or {}).items():
            rows[f"ours, {state} ({protocol} protocol)"] = _percent_values(values["mean"])
    if paper_dataset:
        found = paper_rows("main_results", dataset=paper_dataset)
        if not found:
            known = sorted({row["dataset"] for row in paper_table("main_results")})
            raise ValueError(f"paper_dataset {paper_dataset!r} is not in Table 1; choose one of {known}")
        for row in found:
            rows[f"paper: {row['method']} ({paper_dataset}, release evaluation)"] = {
                key: row.get(key) for key in METRIC_KEYS}
    return pd.DataFrame.from_dict(rows, orient="index")


def per_class_table(record: Mapping[str, Any]) -> Any:
    """Per-class metrics in percent, indexed by (protocol, class)."""
    import pandas as pd

    rows = {}
    for protocol, values in (record.get("metrics") or {}).items():
        for entry in values["per_class"]:
            rows[(protocol, entry["cls_name"])] = _percent_values(entry)
        rows[(protocol, "mean")] = _percent_values(values["mean"])
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["protocol", "class"])
    return table


def paper_per_category(dataset: str = "MVTec-AD", method: str = "MambaAD") -> Any:
    """The paper's per-category results of ``method`` on ``dataset``: image and pixel columns."""
    import pandas as pd

    rows: dict[str, dict[str, Any]] = {}
    for row in paper_rows("per_category", dataset=dataset, method=method):
        target = rows.setdefault(row["category"], {})
        prefix = "i" if row["level"] == "image" else "p"
        for key in ("auroc", "ap", "f1max", "aupro"):
            if isinstance(row.get(key), float):
                target[f"{prefix}_{key}"] = row[key]
    if not rows:
        raise ValueError(f"the paper's per-category table has no rows for {method} on {dataset!r}")
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = f"paper: {method} on {dataset} (release evaluation)"
    return table


# ---- side-by-side tables for the grid notebooks -------------------------------------------

_SHORT_BACKBONES = {"ResNet18": "R18", "ResNet34": "R34", "ResNet50": "R50", "WideResNet50": "WRN50"}


def short_backbone(paper_name: str) -> str:
    """The paper's backbone name -> the row-label prefix (``ResNet34`` -> ``R34``)."""
    if paper_name not in _SHORT_BACKBONES:
        raise ValueError(f"unknown paper backbone {paper_name!r}; expected one of {sorted(_SHORT_BACKBONES)}")
    return _SHORT_BACKBONES[paper_name]


def pct(value: float | None, digits: int = 1) -> float | None:
    """A metric in [0, 1] -> percent, rounded (None stays None)."""
    return None if value is None else round(100 * value, digits)


def ours_vs_paper(rows: Sequence[Mapping[str, Any]], paper: Mapping[str, Mapping[str, Any]],
                  keys: Sequence[str] = METRIC_KEYS, protocols: Sequence[str] = ("standard", "ader")) -> Any:
    """Trained rows' metrics (percent) per protocol beside the paper's value of the same label.

    Returns a DataFrame indexed by row label with columns ``(metric, source)``, where
    source is ``ours (<protocol>)`` or ``paper``; rows without training show only the paper.
    """
    import pandas as pd

    table = {}
    for row in rows:
        entry = {}
        for key in keys:
            for protocol in protocols:
                entry[(key, f"ours ({protocol})")] = pct(row.get(f"{protocol}.{key}")) if row.get("trained") else None
            entry[(key, "paper")] = (paper.get(row["label"]) or {}).get(key)
        table[row["label"]] = entry
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["metric", "source"])
    return frame


def scan_row_label(paper_row: Mapping[str, Any]) -> str:
    """A Table 3 row (direction count per method column) -> the notebook's row label.

    One method: ``"hilbert x8"``; several: ``"zigzag4 + hilbert4"`` (column order).
    """
    from mambaad_lib.scan import SCAN_METHODS

    used = [(name, int(paper_row[name])) for name in SCAN_METHODS if int(paper_row.get(name) or 0)]
    if len(used) == 1:
        return f"{used[0][0]} x{used[0][1]}"
    return " + ".join(f"{name}{count}" for name, count in used)


def lss_row_label(paper_row: Mapping[str, Any]) -> str:
    """An LSS-table row -> ``"G3 conv1x1+dw 5,7"`` (group, local convolution, kernels)."""
    return f"G{int(paper_row['group'])} {LSS_LOCAL_CONV[paper_row['local_conv']]} {paper_row['kernels']}"


# The LSS table's local-branch names -> ``model.local_conv``; groups -> LSS options.
LSS_LOCAL_CONV = {"Only DWConv": "dw", "DWConv + Conv": "conv1x1+dw"}
LSS_GROUPS = {1: {"hss_per_lss": 1, "lss_residual": True},
              2: {"hss_per_lss": 1, "lss_residual": False},
              3: {"hss_per_lss": None, "lss_residual": True}}


def lss_grid() -> list[dict[str, Any]]:
    """The LSS table's rows as grid rows (label + ``model.*`` options), in the paper's order."""
    rows = []
    for paper_row in paper_rows("lss_design"):
        kernels = [int(k) for k in str(paper_row["kernels"]).split(",")]
        rows.append({"label": lss_row_label(paper_row), **LSS_GROUPS[int(paper_row["group"])],
                     "local_conv": LSS_LOCAL_CONV[paper_row["local_conv"]], "local_kernels": kernels})
    return rows


# ---- the synthesis notebook: several methods, per class or unified ----------------------------

# method -> profile -> the YAML profile its runs start from (``configs/``).
METHOD_PROFILES: dict[str, dict[str, str]] = {
    "mambaad": {"smoke": "smoke", "demo": "demo", "paper": "paper"},
    "mambaad_las": {"smoke": "smoke", "demo": "demo", "paper": "paper"},
    "glass": {"smoke": "glass_smoke", "demo": "glass_demo", "paper": "paper"},
    "nearest_neighbor": {"smoke": "glass_nearest_neighbor_smoke", "demo": "glass_nearest_neighbor_demo",
                         "paper": "paper"},
}
# Methods that fill a memory bank in one pass instead of training for epochs.
ONE_PASS_METHODS = ("nearest_neighbor",)


def method_available(method: str) -> bool:
    """Whether ``method`` is registered with the engine (``mambaad_lib.methods.METHODS``)."""
    from mambaad_lib.methods import METHODS

    return method in METHODS


def method_config(method: str, settings: TrainingSettings, profile: str,
                  model: Mapping[str, Any] | None = None, **config_options: Any) -> RunConfig:
    """The run config of ``method`` with the notebook's data and schedule settings.

    MambaAD variants also take the settings' base model; other methods keep the model
    section of their own profile (:data:`METHOD_PROFILES`). One-pass methods get one epoch.
    """
    if method not in METHOD_PROFILES:
        raise ValueError(f"no profiles known for method {method!r}; known: {sorted(METHOD_PROFILES)}")
    base = replace_settings(settings, base_profile=METHOD_PROFILES[method][profile])
    if method in ONE_PASS_METHODS:
        base = replace_settings(base, epochs=1)
    return row_config(base, dict(model or {}), profile=profile, method=method, **config_options)


def train_method(method: str, config: RunConfig, per_class: bool, progress: bool = False) -> list[Any]:
    """Train ``config`` once on all its classes (unified) or once per class; returns the outcomes."""
    from mambaad_lib.engine.runner import train
    from mambaad_lib.methods.per_class import train_per_class

    if per_class:
        return train_per_class(config, progress=progress)
    return [train(config, run_id=f"{method}-unified-seed{config.seed}", progress=progress)]


def method_means(outcomes: Sequence[Any], protocol: str = "standard") -> dict[str, Any]:
    """Mean over classes of the metrics of one method's runs (one unified run or one per class)."""
    import numpy as np

    entries = [entry for outcome in outcomes for entry in outcome.record["metrics"][protocol]["per_class"]]
    means = {}
    for key in METRIC_KEYS:
        values = [entry[key] for entry in entries if entry.get(key) is not None]
        means[key] = float(np.mean(values)) if values else None
    return means


def defect_type_table(comparison: Mapping[str, Any]) -> Any:
    """Per-defect-type AUROCs (percent) of every method in a ``defect_type_comparison`` result.

    Rows: defect types (LAS-like flagged); columns: (method, image/pixel AUROC).
    """

    table: dict[str, dict[tuple[str, str], Any]] = {}
    for label, entry in comparison["methods"].items():
        for row in entry["per_defect_type"]:
            target = table.setdefault(row["defect_type"], {("", "LAS-like"): row["las_like"]})
            target[(label, "image AUROC")] = pct(row["i_auroc"])
            target[(label, "pixel AUROC")] = pct(row["p_auroc"])
    return _multi_column_frame(table, "defect type")


def defect_group_table(comparison: Mapping[str, Any]) -> Any:
    """Mean AUROCs (percent) of the LAS-like and the thin/structural defect groups per method."""

    table: dict[str, dict[tuple[str, str], Any]] = {}
    for label, entry in comparison["methods"].items():
        for group in entry["groups"]:
            target = table.setdefault(group["group"], {})
            target[(label, "image AUROC")] = pct(group["i_auroc"])
            target[(label, "pixel AUROC")] = pct(group["p_auroc"])
    return _multi_column_frame(table, "defect group")


def _multi_column_frame(table: Mapping[str, Mapping[tuple[str, str], Any]], index_name: str) -> Any:
    """A data frame with (method, metric) column levels from rows keyed by ``index_name``."""
    import pandas as pd

    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    frame.index.name = index_name
    return frame


# ---- efficiency notebook ---------------------------------------------------------------------


def _machine(payload: Mapping[str, Any]) -> str:
    provenance = payload.get("provenance") or payload.get("environment") or {}
    return str(provenance.get("cpu") or provenance.get("gpu") or provenance.get("platform") or "unknown machine")


def _milliseconds(seconds: float | None) -> float | None:
    """Seconds -> milliseconds rounded to 0.01 (a benchmark that did not time a pass has None)."""
    return None if seconds is None else round(1e3 * seconds, 2)


def benchmark_tables(folder: str | Path | None = None) -> dict[str, Any]:
    """Data frames of the scan and model benchmarks in ``results/benchmarks/`` that exist.

    ``bench_scan.json`` (``benchmarks/bench_scan.py``): one row per decoder-stage shape and
    backend (milliseconds, speed-up over the reference loop, float32 error).
    ``bench_model.json`` (``benchmarks/bench_model.py``): images/s of the full model per
    backend and the scan's share of the time. Keys are titles naming the machine.
    """
    import pandas as pd

    tables = {}
    scan = load_benchmark("bench_scan", folder)
    if scan and scan.get("stages"):
        rows = []
        for stage in scan["stages"]:
            for backend, timing in stage["backends"].items():
                rows.append({"channels": stage["channels"], "length": stage["length"], "backend": backend,
                             "forward ms": _milliseconds(timing.get("forward_s")),
                             "forward+backward ms": _milliseconds(timing.get("forward_backward_s")),
                             "forward speed-up vs reference": timing.get("forward_speedup_vs_loop"),
                             "fwd+bwd speed-up vs reference": timing.get("forward_backward_speedup_vs_loop"),
                             "fp32 relative error": timing.get("fp32_relative_error_vs_fp64")})
        tables[f"selective scan per decoder stage, batch {scan['stages'][0]['batch']} ({_machine(scan)})"] = \
            pd.DataFrame(rows).set_index(["channels", "length", "backend"])
    model = load_benchmark("bench_model", folder)
    if model and model.get("backends"):
        rows = [{"backend": name, "inference images/s": timing.get("inference_images_per_s"),
                 "training images/s": timing.get("train_images_per_s"),
                 "scan share of inference": timing.get("scan_share_inference"),
                 "scan share of training": timing.get("scan_share_train")}
                for name, timing in model["backends"].items()]
        tables[f"full model, {model.get('image_size')}px, batch {model.get('batch')} ({_machine(model)})"] = \
            pd.DataFrame(rows).set_index("backend").round(3)
    return tables


def cost_vs_auroc_points(results_root: str | Path, profile: str) -> list[dict[str, Any]]:
    """Points for the cost-vs-AUROC plots: the paper's Table 2 and our backbones-chapter rows.

    Our points use the ader protocol's image AUROC (the paper's evaluation) and the
    parameters/FLOPs at 256x256; they are only there when notebook 02 ran with ``profile``.
    """
    points = [{"label": f"{short_backbone(row['backbone'])} {row['decoder_depth']}", "group": "paper (MVTec-AD)",
               "params_m": row["params_m"], "flops_g": row["flops_g"], "i_auroc": row["i_auroc"]}
              for row in paper_rows("backbone_depth")]
    try:
        summary = read_summary(results_root, "02_backbones_depths", profile)
    except FileNotFoundError:
        return points
    for row in summary["rows"]:
        if row.get("trained"):
            points.append({"label": row["label"], "group": f"ours ({profile} profile, ader)",
                           "params_m": row["params_m_256"], "flops_g": row["flops_g_256"],
                           "i_auroc": pct(row.get("ader.i_auroc"))})
    return points
