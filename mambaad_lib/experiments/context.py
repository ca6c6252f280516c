"""The one object a notebook holds: where its data and outputs are, at which size it runs.

Every notebook's parameters cell defines the same papermill parameters (``profile``,
``dataset_root``, ``dataset_name``, ``device``, ``seeds``, ``results_root``, ``runs_root``)
and its next cell makes a :class:`Context` of them::

    ctx = ex.Context.from_parameters("03_scan_methods", globals())

Everything else goes through it: run configs (:meth:`Context.config`), the figures folder,
the synthetic dataset, the summary file.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from mambaad_lib.data import meta_path
from mambaad_lib.data.synthetic import make_synthetic_dataset
from mambaad_lib.engine.config import RunConfig, SyntheticConfig, load_config
from mambaad_lib.experiments.settings import DEFAULT_SEEDS, SHARED_EXPERIMENT, SIZES, TrainingSettings
from mambaad_lib.experiments.summary import read_summary, write_summary


@dataclass(frozen=True)
class Context:
    """A notebook's run: name, profile size, data, device, seeds and output folders
    (``dataset_name`` None: each method's profile names its own dataset; ``seeds`` None: the
    profile's :data:`~mambaad_lib.experiments.settings.DEFAULT_SEEDS`)."""

    notebook: str
    profile: str = "smoke"
    dataset_root: str = "data"
    dataset_name: str | None = "synthetic"
    device: str = "cpu"
    seeds: tuple[int, ...] | None = None
    results_root: str = "results"
    runs_root: str = "runs"

    def __post_init__(self) -> None:
        if isinstance(self.seeds, (str, int)):  # papermill -p seeds "0,1,2" or -p seeds 3
            object.__setattr__(self, "seeds", tuple(int(part) for part in str(self.seeds).split(",") if part.strip()))
        if self.profile not in SIZES:
            raise ValueError(f"profile must be one of {list(SIZES)}, got {self.profile!r}")
        if self.seeds is None:
            object.__setattr__(self, "seeds", DEFAULT_SEEDS[self.profile])
        if not self.seeds or not all(isinstance(seed, int) for seed in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers, got {list(self.seeds)!r}")
        object.__setattr__(self, "seeds", tuple(self.seeds))

    @classmethod
    def from_parameters(cls, notebook: str, namespace: Mapping[str, Any]) -> "Context":
        """The context of ``notebook`` from its parameters (a notebook passes ``globals()``)."""
        names = [item.name for item in fields(cls) if item.name != "notebook"]
        return cls(notebook, **{name: namespace[name] for name in names if name in namespace})

    # ---- folders and data ----------------------------------------------------------------
    @property
    def figures(self) -> Path:
        """``<results_root>/<notebook>/<profile>/`` (created): figures and the summary."""
        folder = Path(self.results_root) / self.notebook / self.profile
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def ensure_dataset(self, method: str = "mambaad") -> Path:
        """The meta file of the dataset; a missing synthetic dataset is generated first.

        The generator's settings are those of ``method``'s profile of this size when that
        profile names the same dataset, else the standard benchmark's (7 classes, 60 + 40
        images, 256x256), so that a later run never mistakes a tiny dataset for the benchmark.

        Raises:
            FileNotFoundError: a real dataset (name not starting with ``synthetic``) is missing.
        """
        profile = load_config(self.profile, {"method": method})
        name = self.dataset_name or profile.data.name
        meta = meta_path(self.dataset_root, name)
        if meta.is_file():
            return meta
        if not name.startswith("synthetic"):
            raise FileNotFoundError(f"dataset {name!r} has no meta file {str(meta)!r}; convert it first "
                                    f"with 'mambaad prep <dataset> SRC --root {self.dataset_root}'")
        synthetic = profile.synthetic if profile.data.name == name else SyntheticConfig()
        return make_synthetic_dataset(self.dataset_root, name=name, seed=synthetic.seed,
                                      image_size=synthetic.image_size, n_train=synthetic.n_train,
                                      n_test=synthetic.n_test, classes=synthetic.classes)

    # ---- run configs --------------------------------------------------------------------
    def config(self, method: str = "mambaad", settings: TrainingSettings | None = None,
               model: Mapping[str, Any] | None = None, seed: int | None = None, schedule: bool = True,
               architecture: bool = True, **overrides: Any) -> RunConfig:
        """The run config of one row: ``method``'s profile of this size, the notebook's
        ``settings`` (data; schedule and base architecture when asked), the row's ``model.*``
        options, this context's data, device, seed and folders, then ``overrides`` (dotted keys).
        Under ``shared`` settings the experiment is :data:`SHARED_EXPERIMENT` for every
        notebook, so identical rows of two notebooks are one run (:func:`~mambaad_lib.experiments.run_row`).

        Raises:
            ConfigError: an option the method does not have (the message names it).
        """
        values = {} if settings is None else settings.overrides(schedule=schedule, architecture=architecture)
        values.update({f"model.{key}": value for key, value in (model or {}).items()})
        experiment = SHARED_EXPERIMENT if settings is not None and settings.shared else self.notebook
        values.update({"method": method, "experiment": experiment, "profile": self.profile,
                       "seed": self.seeds[0] if seed is None else seed, "device": self.device,
                       "data.root": str(self.dataset_root), "paths.results_dir": str(self.results_root),
                       "paths.runs_dir": str(Path(self.runs_root) / self.profile)})  # run ids repeat across sizes
        if self.dataset_name is not None:
            values["data.name"] = self.dataset_name
        values.update(overrides)
        return load_config(self.profile, values)

    # ---- the summary ----------------------------------------------------------------------
    def write_summary(self, payload: Mapping[str, Any]) -> Path:
        """Write this notebook's summary (with the context's parameters and provenance)."""
        context = {"dataset": self.dataset_name, "device": self.device, "seeds": list(self.seeds)}
        return write_summary(self.results_root, self.notebook, self.profile, {"context": context, **payload})

    def read_summary(self, notebook: str | None = None) -> dict[str, Any]:
        """The summary of ``notebook`` (default: this one) at this profile size."""
        return read_summary(self.results_root, notebook or self.notebook, self.profile)
