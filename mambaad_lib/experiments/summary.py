"""A notebook's summary file: the one JSON its page's tables, figures and sentences are drawn from.

``<results_root>/<notebook>/<profile>/summary.json`` holds ``schema``, ``notebook``,
``profile``, ``environment`` (versions and the code's commit, read when the file is
written) and the notebook's own keys. Every notebook writes one through
:meth:`~mambaad_lib.experiments.Context.write_summary`.

The second half builds the sentences of each chapter's *What we found* section from the
rows a notebook computed (:func:`seed_stats`, :func:`comparison_sentence`,
:func:`best_row_sentence`, :func:`chance_sentence`, :func:`plateau_sentence`, :func:`provenance_sentence`,
:func:`findings`, :func:`describe_run`): numbers are interpolated, never typed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mambaad_lib.engine.convergence import PLATEAU_TAIL, PLATEAU_TOLERANCE
from mambaad_lib.engine.results import environment, read_record
from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.utils.schema import to_plain

SUMMARY_SCHEMA = "mambaad-companion/notebook-summary"


def summary_path(results_root: str | Path, notebook: str, profile: str, name: str = "summary") -> Path:
    """``<results_root>/<notebook>/<profile>/<name>.json``."""
    return Path(results_root) / notebook / profile / f"{name}.json"


def write_summary(results_root: str | Path, notebook: str, profile: str, payload: Mapping[str, Any],
                  name: str = "summary") -> Path:
    """Write a notebook's summary atomically, with its schema header and provenance."""
    path = summary_path(results_root, notebook, profile, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"schema": SUMMARY_SCHEMA, "notebook": notebook, "profile": profile, "environment": environment(),
              **to_plain(dict(payload))}
    return atomic_write_json(path, record)


def read_summary(results_root: str | Path, notebook: str, profile: str, name: str = "summary") -> dict[str, Any]:
    """What :func:`write_summary` wrote.

    Raises:
        FileNotFoundError: with the command that writes it.
    """
    path = summary_path(results_root, notebook, profile, name)
    if not path.is_file():
        raise FileNotFoundError(f"no summary {str(path)!r}: run notebook {notebook} with profile {profile!r} first "
                                f"(mambaad reproduce --profile {profile} --only {notebook})")
    return json.loads(path.read_text(encoding="utf-8"))


# ---- "What we found": sentences built from a notebook's results ------------------------------
# Every number in these sentences is interpolated from the rows a notebook just computed, so a
# rerun rewrites them; nothing here is typed by hand.

CHANCE = 0.5            # AUROC of a detector that ranks at random
CHANCE_MARGIN = 0.05    # within 5 points of chance counts as "at chance"


@dataclass(frozen=True)
class SeedStats:
    """A row's metric over seeds, in [0, 1]: mean, population std (0 for one seed), seed count."""

    mean: float
    std: float
    n: int

    def text(self) -> str:
        """``"72.4 ± 1.3 %"`` (percent, one decimal); one seed: ``"72.4 % (one seed)"``."""
        if self.n == 1:
            return f"{100 * self.mean:.1f} % (one seed)"
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f} %"


def seed_stats(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, SeedStats]:
    """``key`` (e.g. ``"ader.i_auroc"``) of every trained row label over its seeds, in row order.

    Rows with ``trained`` false or no value of ``key`` are left out (a label with none is absent).
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        if row.get("trained", True) and row.get(key) is not None:
            values.setdefault(row["label"], []).append(float(row[key]))
    return {label: SeedStats(float(np.mean(found)), float(np.std(found)), len(found))
            for label, found in values.items()}


def comparison_sentence(stats: Mapping[str, SeedStats], first: str, second: str, metric: str) -> str:
    """Whether ``first`` and ``second`` differ by more than their seed spread.

    The spread is the larger of the two standard deviations over seeds; with one seed the
    spread is unknown and the sentence says so.
    """
    a, b = stats[first], stats[second]
    gap = 100 * (a.mean - b.mean)
    head = f"{metric}: {first} {a.text()} vs {second} {b.text()}, a difference of {gap:+.1f} points"
    if min(a.n, b.n) < 2:
        return (f"{head}; with one seed per row the seed spread is unknown, so this is not a ranking "
                f"(rerun with `seeds = [0, 1, 2]`).")
    spread = 100 * max(a.std, b.std)
    verdict = "larger than" if abs(gap) > spread else "within"
    return f"{head}, {verdict} the seed spread ({spread:.1f} points, {min(a.n, b.n)} seeds)."


def best_row_sentence(stats: Mapping[str, SeedStats], metric: str) -> str:
    """The best and worst rows of ``metric`` and whether their gap exceeds the seed spread."""
    if not stats:
        return f"No trained row has a value of {metric}."
    if len(stats) == 1:
        label, value = next(iter(stats.items()))
        return f"{metric}: the one trained row, {label}, reaches {value.text()}."
    ranked = sorted(stats, key=lambda label: stats[label].mean, reverse=True)
    return f"Best row: {ranked[0]}. " + comparison_sentence(stats, ranked[0], ranked[-1], metric)


def chance_sentence(stats: Mapping[str, SeedStats], metric: str, budget: str) -> str | None:
    """Say which rows sit at chance (``metric`` within :data:`CHANCE_MARGIN` of 0.5) at the
    training ``budget`` (e.g. ``"40 epochs on 20 images per class"``) and what limits them;
    None when no row does."""
    at_chance = [label for label, value in stats.items() if abs(value.mean - CHANCE) <= CHANCE_MARGIN]
    if not at_chance:
        return None
    if len(stats) == 1:
        which = "The one trained row"
    elif len(at_chance) == len(stats):
        which = "Every row"
    else:
        which = f"{len(at_chance)} of {len(stats)} rows"
    verb = "sits" if len(at_chance) == 1 else "sit"
    return (f"{which} ({', '.join(at_chance)}) {verb} at chance on {metric} (within "
            f"{100 * CHANCE_MARGIN:.0f} points of {100 * CHANCE:.0f}) at this budget ({budget}), so these rows rank "
            "nothing on it: where their training loss plateaued (see the plateau sentence), more epochs would "
            "not change that, and the random encoder's features or the data are the limit, which the `paper` "
            "profile (ImageNet encoder, real data) removes.")


def plateau_sentence(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Whether the trained rows' loss curves passed the plateau rule
    (:mod:`mambaad_lib.engine.convergence`), naming the runs that did not and how much their
    loss still fell over the last tenth of the epochs; None when no row has a verdict."""
    judged = [row for row in rows if row.get("trained", True) and row.get("plateaued") is not None]
    if not judged:
        return None
    open_runs = [row for row in judged if not row["plateaued"]]
    head = f"{len(judged) - len(open_runs)} of {len(judged)} training runs reached a plateau of the training loss"
    rule = f"(less than {100 * PLATEAU_TOLERANCE:.1f}% lower over the last {100 * PLATEAU_TAIL:.0f}% of the epochs)"
    if not open_runs:
        return f"{head} {rule}: the rows compare trained models, not stopped ones."
    still = ", ".join(f"{row['label']} seed {row['seed']} ({100 * row['late_improvement']:.1f}%)"
                      for row in open_runs)
    return f"{head} {rule}; still falling: {still}, so those rows may improve with more epochs."


def provenance_sentence(rows: Sequence[Mapping[str, Any]]) -> str:
    """How many of ``rows`` (trained ones) were trained in this execution and which were reused
    from earlier finished runs, with the commit each reused run was made at (short hash, and
    whether that checkout had uncommitted changes), read from its results file."""
    trained = [row for row in rows if row.get("trained", True) and row.get("results_file")]
    reused = [row for row in trained if row.get("reused")]
    if not reused:
        return f"All {len(trained)} run(s) shown were trained in this execution."
    commits: dict[str, list[str]] = {}
    for row in reused:
        commits.setdefault(_commit_text(row), []).append(str(row["label"]))
    made = "; ".join(f"{', '.join(dict.fromkeys(labels))} at {commit}" for commit, labels in commits.items())
    return (f"{len(trained) - len(reused)} of {len(trained)} run(s) were trained in this execution; "
            f"{len(reused)} reused an identical finished run: {made}.")


def _commit_text(row: Mapping[str, Any]) -> str:
    if "git_commit" in row:
        commit, dirty = row.get("git_commit"), row.get("git_dirty")
    else:  # rows that do not carry the provenance (open-set grid): read it from the results file
        environment_ = (read_record(row["results_file"]) or {}).get("environment") or {}
        commit, dirty = environment_.get("git_commit"), environment_.get("git_dirty")
    if not commit:
        return "an unknown commit (not run from a git checkout)"
    state = {True: "with uncommitted changes", False: "clean"}.get(dirty, "cleanliness unknown")
    return f"commit {commit[:10]} ({state})"


def findings(sentences: Iterable[str | None]) -> str:
    """The "What we found" list as Markdown: one bullet per sentence (None entries dropped)."""
    return "\n".join(f"- {sentence}" for sentence in sentences if sentence)


def describe_run(config: Any) -> str:
    """One line of what a run config trains: image size, classes, training images, schedule,
    encoder and decoder depths (a :class:`~mambaad_lib.engine.config.RunConfig`)."""
    data, train, model = config.data, config.train, config.model
    text = (f"{data.crop_size}x{data.crop_size} images, classes {list(data.classes or []) or 'all'}, "
            f"{data.train_per_class or 'all'} normal training images per class, {train.epochs} epochs at batch "
            f"{train.batch_size} (lr {train.scaled_lr:g})")
    if hasattr(model, "backbone"):
        text += f", {model.backbone} encoder ({getattr(model, 'encoder_weights', 'default weights')})"
    if hasattr(model, "depths"):
        text += f", depths {list(model.depths)}"
    return text
