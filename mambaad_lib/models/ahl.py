"""AHL's Collaborative Differentiable Learning (CDL) and its importance weighting (AHL, arXiv:2310.12790).

The unified model g has the architecture of the base model's heads (DevNet or DRA). At every
epoch, for every episode i (from :mod:`~mambaad_lib.models.hadg`):

1. phi_i starts at theta_g and takes ``inner_steps`` SGD steps (lr ``inner_lr``) on support
   batches; the first step keeps its graph (second order), the others are first order;
2. the adapted phi_i's loss over ``query_batches`` query batches is episode i's loss L_i;
3. with the importance module psi on, phi_i scores the evaluation set (below) for psi.

The epoch's loss ``sum_i c_i L_i`` takes **one** Adam step of g (paper Eq. 2-4). Weights:
c_i = 1/T until psi has history, then c_i = w_i = softmax(-r_i) (paper). psi (a 2-layer
bidirectional LSTM, hidden 6 -> ReLU -> Linear 12 -> T) reads the last K = 5 epochs' score
vectors s_j in R^T of every evaluation sample and predicts the current ones (MSE, trained one
step per epoch); r_i is the weighted error of psi's predicted scores of model i against the
labels (normal 0, anomaly 1).

Paper protocol (default): evaluation set = all normal training images and all labelled
anomalies; for model i its own support normals are excluded, its support anomalies weigh 0.5
("seen"), the other anomalies 1.0 ("unseen"), normals 0.5; weights are used from epoch
``max(weights_from_epoch, K + 1)`` (psi must have been trained once); psi runs without
dropout from zero initial states; the Adam step is taken at the end of its epoch.

``release_compat`` (the released ``main.py``): evaluation set = every episode's query set;
r_e = 0.5 E_normal + 0.5 E_pseudo + 1.0 E_seen with per-episode mean errors summed and
divided by the total count of each kind; c_i = 1/T until epoch 6, then 0.5 + 0.5 w_i from
epoch 7 (0-based); psi keeps dropout on and draws its initial states uniformly in [0, 1);
psi takes one step per episode; each epoch's Adam step is applied at the start of the next
epoch (the last epoch's gradient is never applied). Best-epoch selection on the test set
(also in the released code) is never done here: g after the last epoch is the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from mambaad_lib.models.base_training import HeadSchedule
from mambaad_lib.models.devnet import NORMAL, PSEUDO, SEEN
from mambaad_lib.models.hadg import Episode
from mambaad_lib.models.openset_features import BatchSampler, FeatureBank

RELEASE_WEIGHTS_FROM_EPOCH = 7
RELEASE_KIND_WEIGHTS = {NORMAL: 0.5, PSEUDO: 0.5, SEEN: 1.0}


@dataclass
class CDLConfig(HeadSchedule):
    """CDL hyper-parameters; defaults are the released code's (= paper version B)."""

    inner_lr: float = 2e-4
    inner_steps: int = 41
    query_batches: int = 20
    outer_lr: float = 2e-3
    outer_weight_decay: float = 1e-4
    use_psi: bool = True
    history: int = 5
    weights_from_epoch: int = 5
    psi_hidden: int = 6
    psi_lr: float = 2e-3
    psi_weight_decay: float = 1e-3

    def __post_init__(self) -> None:
        self.check("cdl", counts=("inner_steps", "query_batches", "history", "psi_hidden"),
                   rates=("inner_lr", "outer_lr", "psi_lr"))


class ImportanceLSTM(nn.Module):
    """psi: (S, K, T) score histories -> (S, T) predicted current scores.

    ``random_state``: draw the initial hidden/cell states uniformly in [0, 1) at every call
    (released code) instead of zeros.
    """

    def __init__(self, n_models: int, hidden: int = 6, random_state: bool = False,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_models, hidden, num_layers=2, bidirectional=True, dropout=0.5, batch_first=True)
        self.fc = nn.Linear(2 * hidden, n_models)
        self.random_state, self.generator = random_state, generator

    def forward(self, history: Tensor) -> Tensor:
        states = None
        if self.random_state:
            shape = (4, history.shape[0], self.lstm.hidden_size)  # layers x directions, S, hidden
            states = (torch.rand(shape, generator=self.generator), torch.rand(shape, generator=self.generator))
        out, _ = self.lstm(history, states)       # (S, K, 2*hidden)
        return self.fc(F.relu(out[:, -1]))        # (S, T)


@dataclass
class EvaluationSet:
    """Samples psi watches: (kind, row, generator) members plus, per model, an error weight per sample."""

    members: list[tuple[int, int, str | None]]
    weights: np.ndarray  # (T, S): weight of sample j in model i's error (0 = excluded)


def paper_evaluation_set(bank: FeatureBank, episodes: list[Episode]) -> EvaluationSet:
    """All normals and labelled anomalies; model i: own support normals excluded, its support
    anomalies 0.5, other anomalies 1.0, normals 0.5 (weights normalised per model)."""
    members = ([(NORMAL, i, None) for i in range(bank.n_normal)] + [(SEEN, i, None) for i in range(bank.n_anomalies)])
    weights = np.zeros((len(episodes), len(members)))
    for model, episode in enumerate(episodes):
        own_normals = set(episode.support.normal.tolist()) | {
            int(row) for rows in episode.support.pseudo.values() for row in rows}
        seen = set(episode.support.anomalies.tolist())
        for j, (kind, row, _) in enumerate(members):
            if kind == NORMAL:
                weights[model, j] = 0.0 if row in own_normals else 0.5
            else:
                weights[model, j] = 0.5 if row in seen else 1.0
        weights[model] /= max((weights[model] > 0).sum(), 1)
    return EvaluationSet(members, weights)


def release_evaluation_set(episodes: list[Episode]) -> EvaluationSet:
    """Every episode's query set; r_e = sum over kinds of weight * (sum over episodes of that
    episode's mean squared error of the kind) / (total count of the kind)."""
    members, episode_of = [], []
    for index, episode in enumerate(episodes):
        query = episode.query.members()
        members += query
        episode_of += [index] * len(query)
    kinds, episode_of = np.array([m[0] for m in members]), np.array(episode_of)
    row = np.zeros(len(members))
    for kind, weight in RELEASE_KIND_WEIGHTS.items():
        total = max((kinds == kind).sum(), 1)
        for index in range(len(episodes)):
            chosen = (kinds == kind) & (episode_of == index)
            if chosen.any():
                row[chosen] = weight / chosen.sum() / total
    return EvaluationSet(members, np.tile(row, (len(episodes), 1)))


@dataclass
class CDLHistory:
    epoch_losses: list[float] = field(default_factory=list)
    episode_weights: list[list[float]] = field(default_factory=list)
    psi_losses: list[float] = field(default_factory=list)


def _labels_of(members: list[tuple[int, int, str | None]]) -> Tensor:
    return torch.tensor([0.0 if kind == NORMAL else 1.0 for kind, _, _ in members])


def _adapt(head: nn.Module, params: dict[str, Tensor], support: BatchSampler, config: CDLConfig,
           generator: torch.Generator) -> dict[str, Tensor]:
    """phi_i: ``inner_steps`` SGD steps from theta_g on support batches (the first one second order)."""
    fast = dict(params)
    for step in range(config.inner_steps):
        features, labels, reference = support.sample()
        loss = head.loss(functional_call(head, fast, (features, reference)), labels, generator)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=step == 0, allow_unused=True)
        fast = {name: value - config.inner_lr * (torch.zeros_like(value) if grad is None else
                                                  grad if step == 0 else grad.detach())
                for (name, value), grad in zip(fast.items(), grads)}
    return fast


def _query_loss(head: nn.Module, fast: dict[str, Tensor], query: BatchSampler, config: CDLConfig,
                generator: torch.Generator) -> Tensor:
    """Mean loss of the adapted weights over ``query_batches`` query batches (L_i)."""
    total = 0.0
    for _ in range(config.query_batches):
        features, labels, reference = query.sample()
        total = total + head.loss(functional_call(head, fast, (features, reference)), labels, generator)
    return total / config.query_batches


def _episode_weights(psi: ImportanceLSTM, score_history: list[Tensor], evaluation: EvaluationSet,
                     labels: Tensor, config: CDLConfig, epoch: int, first_weighted: int, release_compat: bool,
                     n_models: int) -> Tensor:
    """c_i of this epoch: 1/T before ``first_weighted``; then softmax(-r) (paper) or 0.5 + 0.5 softmax(-r)."""
    uniform = torch.full((n_models,), 1.0 / n_models)
    if not config.use_psi or epoch < first_weighted or len(score_history) < config.history:
        return uniform
    psi.train(release_compat)  # the released code never switches psi to eval (dropout stays on)
    with torch.no_grad():
        recent = torch.stack(score_history[-config.history:], dim=1)        # (S, K, T)
        predicted = psi(recent)                                              # (S, T)
    squared = (predicted - labels[:, None]) ** 2                             # (S, T)
    errors = (torch.as_tensor(evaluation.weights, dtype=squared.dtype) * squared.T).sum(1)  # (T,)
    weights = torch.softmax(-errors, dim=0)
    return 0.5 + 0.5 * weights if release_compat else weights


def _train_psi(psi: ImportanceLSTM, optimizer: torch.optim.Optimizer, score_history: list[Tensor],
               config: CDLConfig, steps: int) -> float:
    """``steps`` Adam steps of psi: last K epochs before the newest -> the newest scores (MSE)."""
    inputs = torch.stack(score_history[-config.history - 1:-1], dim=1)      # (S, K, T)
    target = score_history[-1]                                              # (S, T)
    psi.train()
    for _ in range(steps):
        loss = F.mse_loss(psi(inputs), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def collaborative_training(head: nn.Module, bank: FeatureBank, episodes: list[Episode], config: CDLConfig,
                           generator: torch.Generator, n_reference: int = 0, release_compat: bool = False,
                           progress: bool = False) -> CDLHistory:
    """Train the unified model ``head`` (in place) by CDL on the episodes; returns the history."""
    n_models = len(episodes)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.outer_lr, weight_decay=config.outer_weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_epochs, config.lr_gamma)
    samplers = [(BatchSampler(bank, e.support, config.per_kind, generator, n_reference),
                 BatchSampler(bank, e.query, config.per_kind, generator, n_reference)) for e in episodes]
    evaluation = release_evaluation_set(episodes) if release_compat else paper_evaluation_set(bank, episodes)
    eval_features = bank.gather(np.array([m[0] for m in evaluation.members]),
                                np.array([m[1] for m in evaluation.members]), [m[2] for m in evaluation.members])
    eval_labels = _labels_of(evaluation.members)
    psi = ImportanceLSTM(n_models, config.psi_hidden, random_state=release_compat, generator=generator)
    psi_optimizer = torch.optim.Adam(psi.parameters(), lr=config.psi_lr, weight_decay=config.psi_weight_decay)
    first_weighted = RELEASE_WEIGHTS_FROM_EPOCH if release_compat else max(config.weights_from_epoch,
                                                                           config.history + 1)
    score_history: list[Tensor] = []  # per epoch (S, T)
    history = CDLHistory()
    pending_step = False
    head.train()
    for epoch in tqdm(range(config.epochs), desc="AHL (CDL)", unit="epoch", disable=not progress, leave=False):
        if release_compat and pending_step:  # the released code steps one epoch late
            optimizer.step()
        weights = _episode_weights(psi, score_history, evaluation, eval_labels, config, epoch, first_weighted,
                                   release_compat, n_models)
        history.episode_weights.append(weights.tolist())
        optimizer.zero_grad(set_to_none=True)
        params = dict(head.named_parameters())
        epoch_loss, epoch_scores = 0.0, torch.zeros(len(evaluation.members), n_models)
        for model, (support, query) in enumerate(samplers):
            fast = _adapt(head, params, support, config, generator)
            query_loss = _query_loss(head, fast, query, config, generator)
            (weights[model] * query_loss).backward()
            epoch_loss += float(weights[model]) * float(query_loss.detach())
            if config.use_psi:
                with torch.no_grad():
                    frozen = {name: value.detach() for name, value in fast.items()}
                    epoch_scores[:, model] = head.score(
                        functional_call(head, frozen, (eval_features, support.reference())))
        torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
        if release_compat:
            pending_step = True
        else:
            optimizer.step()
        scheduler.step()
        history.epoch_losses.append(epoch_loss)
        if config.use_psi:
            score_history.append(epoch_scores)
            if len(score_history) > config.history:
                history.psi_losses.append(_train_psi(psi, psi_optimizer, score_history, config,
                                                     steps=n_models if release_compat else 1))
        if not np.isfinite(epoch_loss):
            raise FloatingPointError(f"CDL loss became {epoch_loss} at epoch {epoch + 1}; lower cdl.outer_lr")
    head.eval()
    return history
