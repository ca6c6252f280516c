"""The open-set supervised anomaly detection (OSAD) protocol of DRA and AHL, as data splits.

A model is trained on the normal training images of one class plus ``M`` labelled
anomalies; it is tested on the remaining test images, which may contain anomaly types never
seen in training. The labelled anomalies are taken from the class's **test** split (as on
MVTec AD in DRA/AHL) and removed from the evaluation set. Exact rule (per class):

1. candidates: the anomalous test items (``anomaly`` = 1), sorted by ``img_path`` (so the
   split does not depend on the order of the meta file); in the ``hard`` setting only those
   whose ``specie_name`` (defect type) is ``known_type``;
2. ``numpy.random.RandomState(seed).permutation(len(candidates))`` shuffles them (the
   released code's generator, seed 42 by default); the first ``M`` are the labelled anomalies;
3. evaluation set: every normal test item plus, in the ``general`` setting, every anomaly
   not drawn; in the ``hard`` setting, every anomaly of the *other* types (the known type
   leaves the test set entirely, drawn or not).

Seen types are the types of the labelled anomalies; the test set's other types are unseen.
On the synthetic benchmark the defect types (scratch, hole, stain, crack, cut, patch) play
the anomaly classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

SETTINGS = ("general", "hard")


@dataclass
class OpenSetConfig:
    """Which open-set split to build (``model.openset`` in a run config).

    ``setting``: ``general`` (M anomalies from all defect types) or ``hard`` (M anomalies of
    ``known_type`` only, that type removed from the test set). ``seed``: the split's own seed
    (42 in the released code), independent of the run's training seed.
    """

    setting: str = "general"
    n_anomalies: int = 10
    known_type: str | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"openset.setting must be one of {list(SETTINGS)}, got {self.setting!r}")
        if self.n_anomalies < 1:
            raise ValueError(f"openset.n_anomalies must be >= 1, got {self.n_anomalies}")
        if self.setting == "hard" and not self.known_type:
            raise ValueError("openset.known_type must name a defect type in the hard setting")
        if self.setting == "general" and self.known_type is not None:
            raise ValueError(f"openset.known_type is only used in the hard setting, got {self.known_type!r} "
                             "with setting 'general'")


@dataclass(frozen=True)
class OpenSetSplit:
    """Positions (into the test items given to :func:`split_openset`) of the two parts.

    ``labelled``: the M training anomalies, in draw order; ``test``: the evaluation items, in
    their original order; ``seen_types``/``unseen_types``: defect types of the labelled
    anomalies and the test anomaly types not among them.
    """

    config: OpenSetConfig
    labelled: tuple[int, ...]
    test: tuple[int, ...]
    seen_types: tuple[str, ...]
    unseen_types: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        """Facts for results files."""
        return {"setting": self.config.setting, "n_anomalies": self.config.n_anomalies,
                "known_type": self.config.known_type, "split_seed": self.config.seed,
                "n_labelled": len(self.labelled), "n_test": len(self.test),
                "seen_types": list(self.seen_types), "unseen_types": list(self.unseen_types)}


def split_openset(items: Sequence[Mapping[str, Any]], config: OpenSetConfig) -> OpenSetSplit:
    """Split one class's test items (dicts with ``img_path``, ``specie_name``, ``anomaly``).

    Raises:
        ValueError: items of several classes, an unknown ``known_type``, fewer candidate
            anomalies than ``n_anomalies``, or no anomaly left to test.
    """
    classes = {item.get("cls_name") for item in items}
    if len(classes) > 1:
        raise ValueError(f"split_openset takes the test items of one class, got classes {sorted(map(str, classes))}")
    anomalous = [index for index, item in enumerate(items) if item["anomaly"]]
    types = sorted({items[index]["specie_name"] for index in anomalous})
    if config.setting == "hard" and config.known_type not in types:
        raise ValueError(f"openset.known_type {config.known_type!r} is not a defect type of this class; "
                         f"available: {types}")
    candidates = [index for index in anomalous
                  if config.setting == "general" or items[index]["specie_name"] == config.known_type]
    candidates.sort(key=lambda index: items[index]["img_path"])
    if len(candidates) < config.n_anomalies:
        where = f"of type {config.known_type!r}" if config.setting == "hard" else "in the test split"
        raise ValueError(f"openset.n_anomalies={config.n_anomalies} but only {len(candidates)} anomalies {where} "
                         "can be drawn; lower n_anomalies or generate more test images")
    order = np.random.RandomState(config.seed).permutation(len(candidates))
    labelled = tuple(candidates[position] for position in order[:config.n_anomalies])
    drawn = set(labelled)
    test = tuple(index for index, item in enumerate(items)
                 if not item["anomaly"] or (index not in drawn and (
                     config.setting == "general" or item["specie_name"] != config.known_type)))
    if not any(items[index]["anomaly"] for index in test):
        raise ValueError(f"openset split leaves no anomaly in the test set ({len(anomalous)} anomalies, "
                         f"n_anomalies={config.n_anomalies}, setting {config.setting!r})")
    seen = tuple(sorted({items[index]["specie_name"] for index in labelled}))
    unseen = tuple(sorted({items[index]["specie_name"] for index in test if items[index]["anomaly"]} - set(seen)))
    return OpenSetSplit(config, labelled, test, seen, unseen)
