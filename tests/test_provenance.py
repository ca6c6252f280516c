"""The reproducibility page's table of weights, masks and protocols is the committed results'."""
from __future__ import annotations

from pathlib import Path

import pytest

from mambaad_lib.engine.results import upgrade_record
from mambaad_lib.experiments.provenance import page_table, provenance_markdown, provenance_rows, replace_table

ROOT = Path(__file__).resolve().parents[1]


def test_reproducibility_page_lists_what_the_committed_results_used():
    page = (ROOT / "book" / "reproducibility.md").read_text(encoding="utf-8")
    assert page_table(ROOT / "results") in page, \
        "rerun: python -m mambaad_lib.experiments.provenance --write book/reproducibility.md"


def _record(experiment, weights, ground_truth, dirty=False):
    return {"experiment": experiment, "profile": "demo", "method": "mambaad", "encoder": {"weights": weights},
            "ground_truth": ground_truth, "environment": {"git_commit": "0123456789", "git_dirty": dirty}}


def test_rows_name_weights_masks_and_dirty_commits():
    bilinear = {"ader": {"masks": "bilinear", "labels_from_masks": True}}
    rows = provenance_rows([
        _record("a", {"choice": "imagenet"}, bilinear),
        _record("a", {"choice": "file", "source": "released checkpoint x.pth (net_t)"}, bilinear, dirty=True),
        upgrade_record({"experiment": "b", "profile": "demo", "method": "mambaad", "encoder": {},
                        "metrics": {"standard": {}}, "config": {"model": {"encoder_weights": "imagenet"}},
                        "environment": {"git_commit": "0123456789", "git_dirty": False}}),
    ])
    first, second = rows
    assert first["runs"] == "2" and first["commits"] == "0123456, 0123456 dirty"
    assert first["encoder weights"] == "ImageNet (the release's timm file); released checkpoint"
    assert first["protocols (masks)"] == "ader (masks bilinear, > 0.5; labels = mask maxima)"
    # Written before the fields existed: torchvision's file and nearest masks.
    assert second["encoder weights"] == "ImageNet (torchvision IMAGENET1K_V1)"
    assert second["protocols (masks)"] == "standard (masks nearest, > 0)"
    assert provenance_markdown(rows).count("\n") == 3


def test_replace_table_needs_the_markers():
    with pytest.raises(ValueError, match="provenance:start"):
        replace_table("no markers", "x")
