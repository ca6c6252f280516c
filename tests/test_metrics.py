"""Tests of mambaad_lib.metrics against scikit-learn and slow, obviously-correct references."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from skimage import measure
from sklearn.metrics import average_precision_score, roc_auc_score

from mambaad_lib.metrics import (
    METRIC_KEYS,
    PROTOCOLS,
    ClassMetrics,
    UndefinedMetricWarning,
    aupro,
    compute_metrics,
    image_metrics,
    per_class_metrics,
    pixel_metrics,
)
from mambaad_lib.metrics.aupro import ProCurveArea
from mambaad_lib.metrics.curves import AveragePrecision, F1Max, RocAuc
from mambaad_lib.metrics.pixel_data import label_regions
from mambaad_lib.metrics.ranking import RankedScores, sweep


# ----------------------------------------------------------------------------- references
def brute_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Max F1 over every distinct threshold, predictions score >= t."""
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def regions_of(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(image index, bool region mask) for every 8-connected region, via scikit-image."""
    found = []
    for i, mask in enumerate(masks):
        labelled = measure.label(mask, connectivity=2)
        for r in range(1, labelled.max() + 1):
            found.append((i, labelled == r))
    return found


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Threshold sweep over every distinct score, per-region overlap, interpolated at the limit."""
    regions = regions_of(masks)
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append(np.sum(pred & normal) / np.sum(normal))
        pros.append(np.mean([np.sum(pred[i] & region) / np.sum(region) for i, region in regions]))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_at_limit) / 2
            break
    return area / fpr_limit


def reference_ader_pixel(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """The release's pixel F1-max and AU-PRO, written as literal loops over thresholds."""
    low, high = maps.min(), maps.max()
    norm = (maps - low) / (high - low)
    f1s = []
    for t in np.arange(0.0, 1.0 + 1e-3, 0.05):
        pred = norm.astype(np.float64) > t
        inter = np.sum(pred & masks)
        precision = inter / (pred.sum() + 1e-8)
        recall = inter / (masks.sum() + 1e-8)
        f1s.append(2 * precision * recall / (precision + recall + 1e-8))
    regions = regions_of(masks)
    fprs, pros = [], []
    for t in np.arange(low, high, (high - low) / 100):
        pred = maps.astype(np.float64) > t
        pros.append(np.mean([np.sum(pred[i] & region) / np.sum(region) for i, region in regions]))
        fprs.append(np.sum(pred & ~masks) / np.sum(~masks))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < 0.3
    x = (fprs[keep] - fprs[keep].min()) / (fprs[keep].max() - fprs[keep].min())
    y = pros[keep]
    area = sum(abs(x[k + 1] - x[k]) * (y[k] + y[k + 1]) / 2 for k in range(len(x) - 1))
    return max(f1s), area


# ----------------------------------------------------------------------------- fixtures
def tied_scores(rng: np.random.Generator, n: int, levels: int, dtype=np.float64) -> np.ndarray:
    return np.round(rng.normal(size=n) * levels / 4).astype(dtype) / levels


def random_maps(rng: np.random.Generator, n: int = 6, size: int = 24, levels: int | None = None):
    """Maps with several defect regions per image, a defect-free image and a single-pixel region."""
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(1, n):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 6, size=2)
            h, w = rng.integers(1, 6, size=2)
            masks[i, y : y + h, x : x + w] = True
    masks[1, -1, -1] = True  # isolated single pixel (corner; neighbours checked below)
    masks[1, -2:, -2:] = masks[1, -2:, -2:] & np.array([[False, False], [False, True]])
    maps = rng.normal(size=masks.shape) + 1.2 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32), masks


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("levels", [3, 40, 100000])
def test_image_metrics_match_sklearn_and_brute_force(dtype, levels):
    rng = np.random.default_rng(levels)
    scores = tied_scores(rng, 600, levels, dtype)
    labels = rng.random(600) < 0.35
    got = image_metrics(scores, labels)
    assert abs(got["i_auroc"] - roc_auc_score(labels, scores)) < 1e-9
    assert abs(got["i_ap"] - average_precision_score(labels, scores)) < 1e-9
    assert abs(got["i_f1max"] - brute_f1_max(scores, labels)) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # packed-key sort / argsort
@pytest.mark.parametrize("levels", [None, 8])
def test_pixel_metrics_match_references(levels, dtype):
    maps, masks = random_maps(np.random.default_rng(1), levels=levels)
    maps = maps.astype(dtype)
    got = pixel_metrics(maps, masks)
    assert abs(got["p_auroc"] - roc_auc_score(masks.ravel(), maps.ravel())) < 1e-9
    assert abs(got["p_ap"] - average_precision_score(masks.ravel(), maps.ravel())) < 1e-9
    assert abs(got["p_f1max"] - brute_f1_max(maps.ravel(), masks.ravel())) < 1e-12
    assert abs(got["p_aupro"] - reference_aupro(maps, masks)) < 1e-4


def test_fixture_has_the_promised_regions():
    _, masks = random_maps(np.random.default_rng(1))
    sizes = [region.sum() for _, region in regions_of(masks)]
    assert 1 in sizes and not masks[0].any() and len(sizes) > masks.shape[0]
    assert label_regions(masks).count == len(sizes)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_reference_with_ties(fpr_limit):
    maps, masks = random_maps(np.random.default_rng(2), n=5, size=20, levels=4)
    assert len(np.unique(maps)) < maps.size // 10  # heavy ties
    assert abs(aupro(maps, masks, fpr_limit=fpr_limit) - reference_aupro(maps, masks, fpr_limit)) < 1e-4


def test_regions_are_eight_connected_and_per_image():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[1, 0, 0] = True  # same place in the next image: a separate region
    assert label_regions(masks).count == 2


def test_sweep_is_chunk_independent_and_ties_span_chunks():
    rng = np.random.default_rng(3)
    maps, masks = random_maps(rng, levels=3)
    scores, labels = maps.ravel(), masks.ravel()
    regions = label_regions(masks)
    results = []
    for chunk in (7, 64, 1 << 22):
        ranked = RankedScores(scores, labels)
        consumers = [RocAuc(ranked.n_pos, ranked.n_neg), AveragePrecision(ranked.n_pos), F1Max(ranked.n_pos),
                     ProCurveArea(ranked.n_neg, regions.count, 0.3)]
        sweep(ranked, consumers, positive_weight=regions.weight, chunk=chunk)
        results.append([c.value for c in consumers])
    np.testing.assert_allclose(results[0], results[2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(results[1], results[2], rtol=0, atol=1e-12)


def test_float32_fast_path_equals_generic_path_and_folds_signed_zero():
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(size=3000), 1).astype(np.float32)
    scores[::7] = -0.0
    scores[::11] = 0.0
    labels = rng.random(3000) < 0.4
    fast = image_metrics(scores, labels)  # packed uint64 keys
    generic = image_metrics(scores.astype(np.float64), labels)  # argsort
    for key in fast:
        assert abs(fast[key] - generic[key]) < 1e-12
    assert abs(fast["i_auroc"] - roc_auc_score(labels, scores)) < 1e-9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_count_where_matches_brute_force(dtype):
    rng = np.random.default_rng(5)
    scores = np.round(rng.normal(size=1000), 2).astype(dtype)
    ranked = RankedScores(scores, np.zeros(1000, dtype=bool))
    thresholds = np.concatenate([[-10.0, 10.0], rng.normal(size=30), scores[:5].astype(np.float64)])
    counts = ranked.count_where(lambda v: v.astype(np.float64) > thresholds, thresholds.size)
    expected = [(scores.astype(np.float64) > t).sum() for t in thresholds]
    np.testing.assert_array_equal(counts, expected)


# ----------------------------------------------------------------------------- ADer protocol
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("integer_valued", [False, True])
def test_ader_protocol_matches_literal_reference(integer_valued, dtype):
    maps, masks = random_maps(np.random.default_rng(6), n=6, size=24)
    if integer_valued:  # min 0, max 100: the 100 AU-PRO thresholds 0, 1, ..., 99 hit tied map values exactly
        maps = np.clip(np.round(maps * 25 + 50), 0, 100).astype(np.float32)
        maps[0, 0, :3] = [0, 99, 100]
    maps = maps.astype(dtype)
    labels = masks.any(axis=(1, 2))
    got = compute_metrics(maps.max(axis=(1, 2)), labels, maps, masks, protocol="ader")
    f1, pro = reference_ader_pixel(maps, masks)
    assert abs(got["p_f1max"] - f1) < 1e-12
    assert abs(got["p_aupro"] - pro) < 1e-12
    standard = compute_metrics(maps.max(axis=(1, 2)), labels, maps, masks)
    for key in ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap"):
        assert got[key] == standard[key]
    assert got["p_f1max"] != standard["p_f1max"]


def test_ader_normalisation_is_per_class_in_per_class_metrics():
    rng = np.random.default_rng(7)
    maps, masks = random_maps(rng, n=8, size=16)
    maps[4:] = maps[4:] * 3 + 5  # second class on another scale
    masks[4] = False  # each class holds a normal image
    names = ["a"] * 4 + ["b"] * 4
    scores, labels = maps.max(axis=(1, 2)), masks.any(axis=(1, 2))
    table = per_class_metrics(scores, labels, maps, masks, names, protocol="ader")
    f1_b, _ = reference_ader_pixel(maps[4:], masks[4:])
    assert abs(table.per_class[1]["p_f1max"] - f1_b) < 1e-12


# ----------------------------------------------------------------------------- extremes
@pytest.mark.parametrize("protocol", ["standard", "ader"])
def test_perfect_maps_score_one_and_inverted_maps_auroc_zero(protocol):
    rng = np.random.default_rng(8)
    _, masks = random_maps(rng)
    spread = rng.random(masks.shape).astype(np.float32) * 0.49
    maps = np.where(masks, 0.51 + spread, spread)  # every defect pixel above every normal one
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    perfect = compute_metrics(scores, labels, maps, masks, protocol=protocol)
    for key in METRIC_KEYS:
        assert perfect[key] == pytest.approx(1.0, abs=1e-7), key
    inverted = compute_metrics(-labels.astype(np.float32), labels, -maps, masks, protocol=protocol)
    assert inverted["i_auroc"] == 0.0 and inverted["p_auroc"] == 0.0
    assert inverted["p_aupro"] < 1e-6


def test_binary_perfect_maps_standard_one_ader_aupro_nan():
    """The release keeps only FPR < 0.3 points; binary maps give a single FPR (0) -> 0/0."""
    _, masks = random_maps(np.random.default_rng(8))
    maps, labels = masks.astype(np.float32), masks.any(axis=(1, 2))
    assert compute_metrics(labels, labels, maps, masks)["p_aupro"] == pytest.approx(1.0, abs=1e-12)
    with pytest.warns(UndefinedMetricWarning, match="ADer AU-PRO"):
        assert math.isnan(compute_metrics(labels, labels, maps, masks, protocol="ader")["p_aupro"])


def test_inverted_maps_standard_aupro_is_zero():
    _, masks = random_maps(np.random.default_rng(8))
    assert aupro(-masks.astype(np.float32), masks) == 0.0


def test_all_normal_batch_gives_documented_nan():
    maps = np.random.default_rng(9).random((3, 8, 8)).astype(np.float32)
    masks = np.zeros((3, 8, 8), dtype=bool)
    with pytest.warns(UndefinedMetricWarning, match="no defect pixel"):
        assert math.isnan(aupro(maps, masks))
    with pytest.warns(UndefinedMetricWarning):
        got = compute_metrics(np.array([0.1, 0.5, 0.9]), np.array([0, 0, 0]), maps, masks)
    for key in METRIC_KEYS:
        assert math.isnan(got[key]), key


def test_single_class_image_labels_give_nan_not_sklearn_crash():
    maps, masks = random_maps(np.random.default_rng(10))
    with pytest.warns(UndefinedMetricWarning, match="single class"):
        got = compute_metrics(np.ones(len(maps)), np.ones(len(maps)), maps, masks)
    assert math.isnan(got["i_auroc"]) and math.isnan(got["mAD"]) and not math.isnan(got["p_auroc"])


def test_torch_inputs_equal_numpy_inputs():
    maps, masks = random_maps(np.random.default_rng(11))
    scores, labels = maps.max(axis=(1, 2)), masks.any(axis=(1, 2)).astype(np.int64)
    from_numpy = compute_metrics(scores, labels, maps, masks)
    from_torch = compute_metrics(torch.from_numpy(scores), torch.from_numpy(labels),
                                 torch.from_numpy(maps), torch.from_numpy(masks.astype(np.float32)))
    assert from_numpy == from_torch


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def good():
    maps, masks = random_maps(np.random.default_rng(12))
    return maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps, masks


def test_shape_mismatch_names_both_arguments(good):
    scores, labels, maps, masks = good
    with pytest.raises(ValueError, match="anomaly_maps has shape .* masks has shape"):
        compute_metrics(scores, labels, maps, masks[:, :-1])
    with pytest.raises(ValueError, match="image_scores has .* anomaly_maps holds"):
        compute_metrics(scores[:-1], labels[:-1], maps, masks)
    with pytest.raises(ValueError, match="anomaly_maps: expected 3 dimensions.*squeeze"):
        compute_metrics(scores, labels, maps[:, None], masks)


def test_non_binary_masks_are_rejected(good):
    scores, labels, maps, masks = good
    with pytest.raises(ValueError, match="masks: must be binary .*255"):
        compute_metrics(scores, labels, maps, masks.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="image_labels: must be binary"):
        compute_metrics(scores, labels * 2.0, maps, masks)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_rejected(good, bad):
    scores, labels, maps, masks = good
    maps, scores = maps.copy(), scores.copy()
    maps[0, 0, 0] = bad
    with pytest.raises(ValueError, match="anomaly_maps: contains 1 NaN or infinite"):
        compute_metrics(scores, labels, maps, masks)
    scores[0] = bad
    with pytest.raises(ValueError, match="image_scores: contains 1 NaN or infinite"):
        compute_metrics(scores, labels, maps, masks)


def test_unknown_protocol_and_bad_fpr_limit(good):
    with pytest.raises(ValueError, match="protocol: expected one of"):
        compute_metrics(*good, protocol="anomalib")
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(good[2], good[3], fpr_limit=0.0)


# ----------------------------------------------------------------------------- per class
def test_per_class_metrics_equal_subset_evaluation_and_mean():
    rng = np.random.default_rng(13)
    maps, masks = random_maps(rng, n=9, size=16)
    masks[[0, 4, 8]] = False  # one normal image per class
    masks[[1, 2, 3, 5, 6, 7], :2, :2] = True
    names = np.array(["cable", "bottle", "screw"] * 3)  # interleaved: selection by index
    scores, labels = maps.max(axis=(1, 2)), masks.any(axis=(1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class has both kinds of image and pixel
        table = per_class_metrics(scores, labels, maps, masks, names)
    assert isinstance(table, ClassMetrics) and table.protocol == "standard"
    assert [row["cls_name"] for row in table.per_class] == ["cable", "bottle", "screw"]
    for row in table.per_class:
        keep = names == row["cls_name"]
        expected = compute_metrics(scores[keep], labels[keep], maps[keep], masks[keep])
        assert {k: row[k] for k in METRIC_KEYS} == expected
    for key in METRIC_KEYS[:-1]:
        assert table.mean[key] == pytest.approx(np.mean([row[key] for row in table.per_class]), abs=1e-15)
    assert table.mean["mAD"] == pytest.approx(np.mean([table.mean[k] for k in METRIC_KEYS[:-1]]), abs=1e-15)
    rows = table.to_rows()
    assert len(rows) == 4 and rows[-1]["cls_name"] == "mean" and set(rows[0]) == {"cls_name", *METRIC_KEYS}


def test_per_class_metrics_rejects_wrong_class_names_length(good):
    with pytest.raises(ValueError, match="class_names has 5 entries"):
        per_class_metrics(*good, class_names=["a"] * 5)


# ----------------------------------------------------------------------------- anomalies without masks
def _three_classes(seed: int = 21):
    """9 images, classes interleaved; images 0, 4, 8 normal, the others anomalous with masks."""
    rng = np.random.default_rng(seed)
    maps, masks = random_maps(rng, n=9, size=16)
    masks[[0, 4, 8]] = False
    masks[[1, 2, 3, 5, 6, 7], :2, :2] = True
    names = np.array(["cable", "bottle", "screw"] * 3)
    return maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps, masks, names


@pytest.mark.parametrize("protocol", ["standard", "ader"])
def test_classes_without_masks_get_image_metrics_only_and_a_note(protocol):
    scores, labels, maps, masks, names = _three_classes()
    has_mask = np.ones(9, dtype=bool)
    has_mask[[1, 7]] = False  # two bottle images lack their mask: their masks are blank, as the loader gives
    masks[[1, 7]] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning spam for the missing masks
        table = per_class_metrics(scores, labels, maps, masks, names, protocol=protocol, has_mask=has_mask)
    rows = {row["cls_name"]: row for row in table.per_class}
    bottle = names == "bottle"
    assert {k: rows["bottle"][k] for k in METRIC_KEYS[:3]} == image_metrics(scores[bottle], labels[bottle])
    assert all(rows["bottle"][k] is None for k in METRIC_KEYS[3:])
    for name in ("cable", "screw"):
        keep = names == name
        assert {k: rows[name][k] for k in METRIC_KEYS} == compute_metrics(
            scores[keep], labels[keep], maps[keep], masks[keep], protocol=protocol)
    assert table.images_without_mask == {"bottle": 2}
    assert table.notes["bottle"] == "pixel metrics not computed (2 images without masks)"
    for key in METRIC_KEYS[:3]:
        assert table.mean[key] == pytest.approx(np.mean([row[key] for row in table.per_class]), abs=1e-15)
    for key in METRIC_KEYS[3:-1]:
        assert table.mean[key] == pytest.approx((rows["cable"][key] + rows["screw"][key]) / 2, abs=1e-15)
    assert table.mean["mAD"] is None
    assert table.notes["mean"] == "pixel metrics are means over the 2 of 3 classes with masks (cable, screw); " \
                                  "mAD not computed"
    assert not any(isinstance(v, float) and math.isnan(v) for row in table.to_rows() for v in row.values())
    table_rows = table.to_rows()
    assert [row["note"] for row in table_rows] == ["", table.notes["bottle"], "", table.notes["mean"]]


def test_no_class_with_masks_gives_no_pixel_means():
    scores, labels, maps, masks, names = _three_classes()
    has_mask = ~labels.astype(bool)  # no anomalous image has a mask
    table = per_class_metrics(scores, labels, maps, masks, names, has_mask=has_mask)
    assert table.images_without_mask == {"cable": 2, "bottle": 2, "screw": 2}
    assert table.notes["cable"] == "pixel metrics not computed (2 images without masks)"
    assert all(table.mean[k] is None for k in METRIC_KEYS[3:])
    assert all(isinstance(table.mean[k], float) for k in METRIC_KEYS[:3])
    assert table.notes["mean"].startswith("pixel metrics and mAD not computed")


def test_has_mask_all_true_changes_nothing():
    data = _three_classes()
    plain = per_class_metrics(*data)
    flagged = per_class_metrics(*data, has_mask=torch.ones(9, dtype=torch.bool))
    assert flagged.per_class == plain.per_class and flagged.mean == plain.mean
    assert flagged.notes == {} and flagged.images_without_mask == {}
    assert all("note" not in row for row in flagged.to_rows())


def test_has_mask_is_validated():
    data = _three_classes()
    has_mask = np.ones(9, dtype=bool)
    has_mask[0] = False  # image 0 is normal
    with pytest.raises(ValueError, match="has_mask is False for 1 normal image"):
        per_class_metrics(*data, has_mask=has_mask)
    with pytest.raises(ValueError, match="has_mask has 8 entries"):
        per_class_metrics(*data, has_mask=np.ones(8, dtype=bool))


# ----------------------------------------------------------------------------- ground truth per protocol
def test_release_binarisation_is_strictly_above_half():
    from mambaad_lib.metrics import binarize_soft_masks

    uint8 = np.array([[[0, 127, 128, 255]]], dtype=np.uint8)  # 127/255 = 0.498, 128/255 = 0.502
    assert binarize_soft_masks(uint8).tolist() == [[[False, False, True, True]]]
    floats = np.array([[[0.0, 0.5, 0.5001, 1.0]]], dtype=np.float32)
    assert binarize_soft_masks(floats).tolist() == [[[False, False, True, True]]]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize_soft_masks(floats * 255)
    with pytest.raises(ValueError, match="uint8"):
        binarize_soft_masks(uint8.astype(np.int64))


def test_protocol_ground_truth_standard_keeps_ours_release_takes_mask_maxima():
    from mambaad_lib.metrics import protocol_ground_truth

    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[1, 2:4, 2:4] = True
    masks[2, 5, 5] = True  # a defect that survives nearest resizing...
    soft = np.zeros((3, 8, 8), dtype=np.uint8)
    soft[1, 1:5, 1:5] = 200
    soft[2, 5, 5] = 90  # ...but is faint after bilinear resizing
    labels = np.array([0, 1, 1])
    got_labels, got_masks = protocol_ground_truth("standard", labels, masks, soft)
    assert got_labels.tolist() == [0, 1, 1] and np.array_equal(got_masks, masks)
    got_labels, got_masks = protocol_ground_truth("ader", labels, masks, soft)
    assert got_labels.tolist() == [0, 1, 0]
    assert np.array_equal(got_masks, soft > 127) and got_masks.dtype == bool
    release, mmad = PROTOCOLS["ader"], PROTOCOLS["adeval"]  # MMAD runs on the same ADer pipeline
    assert (mmad.masks, mmad.labels_from_masks) == (release.masks, release.labels_from_masks)
    with pytest.raises(ValueError, match="mask_soft"):
        protocol_ground_truth("ader", labels, masks)
    with pytest.raises(ValueError, match="2 labels"):
        protocol_ground_truth("ader", labels[:2], masks, soft)


# ----------------------------------------------------------------------------- adeval (MMAD's release)
def test_adeval_protocol_without_the_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "adeval", None)  # makes "import adeval" raise ImportError
    maps, masks = random_maps(np.random.default_rng(1))
    labels = masks.any(axis=(1, 2))
    with pytest.raises(ImportError, match=r"mambaad-companion\[adeval\]"):
        compute_metrics(maps.max(axis=(1, 2)), labels, maps, masks, protocol="adeval")
    from mambaad_lib.metrics import DEFAULT_PROTOCOLS

    assert "adeval" not in DEFAULT_PROTOCOLS and {"standard", "ader"} <= set(DEFAULT_PROTOCOLS)


def binned_reference(maps: np.ndarray, masks: np.ndarray, nstrips: int = 50) -> tuple[float, float]:
    """AUROC and AP on adeval's 51 bin edges: ``score >= edge``, trapezoids, empty precision = 1."""
    low, high = float(maps.min()), float(maps.max())
    edges = np.linspace(0.0, 1.0, nstrips + 1, dtype=np.float32) * (high - low) + low
    positives, negatives = np.sort(maps[masks]), np.sort(maps[~masks])
    tp = positives.size - np.searchsorted(positives, edges, side="left")
    fp = negatives.size - np.searchsorted(negatives, edges, side="left")
    tpr, fpr = tp / positives.size, fp / negatives.size
    with np.errstate(invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    area = getattr(np, "trapezoid", None) or np.trapz
    return float(area(tpr[::-1], fpr[::-1])), float(area(precision[::-1], tpr[::-1]))


def test_adeval_protocol_is_the_binned_curve_with_the_release_f1():
    pytest.importorskip("adeval")
    maps, masks = random_maps(np.random.default_rng(11), n=5, size=40)
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    adeval = compute_metrics(scores, labels, maps, masks, protocol="adeval")
    ader = compute_metrics(scores, labels, maps, masks, protocol="ader")
    for key in ("i_auroc", "i_ap", "i_f1max", "p_f1max"):
        assert adeval[key] == ader[key], key
    auroc, ap = binned_reference(maps, masks)
    assert adeval["p_auroc"] == pytest.approx(auroc, abs=1e-9)
    assert adeval["p_ap"] == pytest.approx(ap, abs=1e-9)
    # 50 strips approximate the exact curves: close, not equal
    assert 0 < abs(adeval["p_auroc"] - ader["p_auroc"]) < 0.01
    assert abs(adeval["p_aupro"] - compute_metrics(scores, labels, maps, masks)["p_aupro"]) < 0.05


def test_adeval_protocol_undefined_cases_are_nan():
    pytest.importorskip("adeval")
    maps, masks = random_maps(np.random.default_rng(2))
    labels = masks.any(axis=(1, 2))
    with pytest.warns(UndefinedMetricWarning, match="constant"):
        constant = compute_metrics(labels.astype(np.float32), labels, np.ones_like(maps), masks, protocol="adeval")
    assert math.isnan(constant["p_auroc"]) and math.isnan(constant["p_aupro"])
    with pytest.warns(UndefinedMetricWarning, match="no defect pixel"):
        empty = compute_metrics(maps.max(axis=(1, 2)), labels, maps, np.zeros_like(masks), protocol="adeval")
    assert math.isnan(empty["p_ap"])


def test_protocol_comparison_script_runs_and_separates_its_effects(tmp_path):
    """benchmarks/compare_protocols.py (the book's table) at a tiny size."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_protocols.py"
    spec = importlib.util.spec_from_file_location("compare_protocols", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # tiny classes may lack a defect pixel
        record = script.main(["--n-images", "16", "--n-classes", "2", "--size", "32", "--source", "96",
                              "--out", str(tmp_path / "out.json")])
    means = record["mean_over_classes"]
    assert (tmp_path / "out.json").is_file()
    for key in ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap"):  # same ground truth, same exact metrics
        assert means["ader, our masks"][key] == means["standard"][key]
    truth = record["ground_truth"]
    assert 0 <= truth["anomalous_images_normal_under_release_masks"] <= truth["anomalous_images"]


def test_image_curves_match_scikit_learn():
    from sklearn.metrics import precision_recall_curve, roc_curve

    from mambaad_lib.metrics import image_curves, image_metrics

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # ties on purpose
    curves = image_curves(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    precision, recall, _ = precision_recall_curve(labels, scores)
    assert np.allclose(curves["fpr"], fpr) and np.allclose(curves["tpr"], tpr)
    # scikit-learn lists precision-recall points by increasing threshold and appends (1, 0)
    assert np.allclose(curves["precision"], precision[:-1][::-1]) and np.allclose(curves["recall"], recall[:-1][::-1])
    metrics = image_metrics(scores, labels)
    assert curves["auroc"] == metrics["i_auroc"] and curves["ap"] == metrics["i_ap"]
    with pytest.raises(ValueError, match="single class"):
        image_curves(scores, np.zeros(300, int))
