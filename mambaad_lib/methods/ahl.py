"""AHL (Zhu et al., CVPR 2024) as a method: a unified head g learned collaboratively over
heterogeneous anomaly distributions, on top of a DevNet or DRA base model.

:meth:`AHLMethod.fit_features` does, on the feature cache of :class:`~mambaad_lib.methods.openset.OpenSetMethod`:

1. the base heads train first (``init_from_base``, the paper's plug-in reading; the released
   code starts g from random weights). When the same grid already trained the base method
   on the same data and seed (a DevNet/DRA run sharing ``TrainingData.shared_cache``), its
   heads are taken instead of training them again;
2. HADG clusters the normal features and builds the episodes (:mod:`mambaad_lib.models.hadg`);
3. CDL trains g over the episodes (:mod:`mambaad_lib.models.ahl`); the model after the last
   epoch is the model (no selection on the test set).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mambaad_lib.methods.base import TrainingData
from mambaad_lib.methods.openset import BASE_MODELS, OpenSetMethod, OpenSetMethodConfig
from mambaad_lib.models.ahl import CDLConfig, collaborative_training
from mambaad_lib.models.hadg import HADGConfig, build_episodes, cluster_normals
from mambaad_lib.models.openset_features import FeatureBank
from mambaad_lib.utils.errors import ConfigError


@dataclass
class AHLMethodConfig(OpenSetMethodConfig):
    """AHL on ``base`` (dra or devnet). ``release_compat``: follow the released code where it
    departs from the paper (cluster-prefix bug, anomaly/generator sharing, psi error set and
    weight use, delayed Adam step, zero-initialised composite head, random init of g);
    ``init_from_base``: start g from the trained base heads (ignored with release_compat)."""

    base: str = "dra"
    release_compat: bool = False
    init_from_base: bool = True
    hadg: HADGConfig = field(default_factory=HADGConfig)
    cdl: CDLConfig = field(default_factory=CDLConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base not in BASE_MODELS:
            raise ConfigError(f"config key 'model.base': must be one of {list(BASE_MODELS)}, got {self.base!r}")


class AHLMethod(OpenSetMethod):
    """AHL's unified head g, collaboratively trained over HADG's episodes."""

    name = "ahl"
    config_class = AHLMethodConfig
    profiles = {"smoke": "ahl_smoke", "demo": "ahl_demo"}

    def __init__(self, config: AHLMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        if config.release_compat and config.composite != "ahl_release":
            config = dataclasses.replace(config, composite="ahl_release")
        super().__init__(config, image_size, device, pretrained)

    @property
    def base_model(self) -> str:
        return self.config.base

    def fit_features(self, bank: FeatureBank, generator: torch.Generator, data: TrainingData) -> dict[str, Any]:
        c = self.config
        facts: dict[str, Any] = {"protocol": "released-code behaviour" if c.release_compat else "paper protocol",
                                 "model_selection": "last epoch"}
        if c.init_from_base and not c.release_compat:
            shared = None if data.shared_cache is None else data.shared_cache.get(self.base_heads_key(data))
            if shared is not None:
                self.net.head.load_state_dict(shared)
                facts["init"] = f"trained base heads (the {c.base} run of the same grid cell)"
            else:
                facts["base_epoch_losses"] = self._train_base(bank, generator)
                facts["init"] = "trained base heads"
        else:
            facts["init"] = "random"
        scale0 = bank.normal[0]  # (N, C, h, w)
        inputs = scale0.flatten(1) if c.hadg.cluster_on == "flattened" else scale0.mean(dim=(2, 3))
        clusters = cluster_normals(inputs.numpy(), c.hadg.n_clusters, data.seed)
        episodes = build_episodes(clusters, bank.n_anomalies, c.hadg, np.random.default_rng([data.seed, 0xE915]),
                                  c.release_compat)
        history = collaborative_training(self.net.head, bank, episodes, c.cdl, generator, self.n_reference,
                                         c.release_compat, progress=False)
        facts.update({"clustered_on": c.hadg.cluster_on, "cluster_sizes": [len(members) for members in clusters],
                      "n_episodes": len(episodes), "episode_generators": [list(e.generators) for e in episodes],
                      "cdl_epoch_losses": history.epoch_losses, "episode_weights": history.episode_weights,
                      "psi_losses": history.psi_losses})
        return facts
