"""The open-set supervised protocol splits (mambaad_lib.data.openset): exact, seeded, leak-free."""
import numpy as np
import pytest

from mambaad_lib.data.openset import OpenSetConfig, split_openset

TYPES = ("scratch", "hole", "stain")


def make_items(n_good=5, per_type=4, cls_name="brick"):
    items = [{"img_path": f"{cls_name}/test/good/{i:03d}.png", "specie_name": "good", "anomaly": 0,
              "cls_name": cls_name} for i in range(n_good)]
    for defect in TYPES:
        items += [{"img_path": f"{cls_name}/test/{defect}/{i:03d}.png", "specie_name": defect, "anomaly": 1,
                   "cls_name": cls_name} for i in range(per_type)]
    return items


def test_general_setting_follows_the_documented_rule():
    items = make_items()
    split = split_openset(items, OpenSetConfig("general", n_anomalies=5, seed=42))
    candidates = sorted((i for i, item in enumerate(items) if item["anomaly"]), key=lambda i: items[i]["img_path"])
    expected = [candidates[p] for p in np.random.RandomState(42).permutation(len(candidates))[:5]]
    assert list(split.labelled) == expected
    assert set(split.labelled).isdisjoint(split.test)                       # no labelled anomaly is tested
    assert set(split.labelled) | set(split.test) == set(range(len(items)))  # every other image is tested
    assert all(not items[i]["anomaly"] for i in range(5)) and set(range(5)) <= set(split.test)
    assert set(split.seen_types) == {items[i]["specie_name"] for i in split.labelled}


def test_split_ignores_meta_order_and_is_seeded():
    items = make_items()
    config = OpenSetConfig("general", n_anomalies=3, seed=7)
    split = split_openset(items, config)
    shuffled = list(reversed(items))
    again = split_openset(shuffled, config)
    assert {items[i]["img_path"] for i in split.labelled} == {shuffled[i]["img_path"] for i in again.labelled}
    other = split_openset(items, OpenSetConfig("general", n_anomalies=3, seed=8))
    assert set(other.labelled) != set(split.labelled)


def test_hard_setting_removes_the_known_type_from_the_test_set():
    items = make_items()
    split = split_openset(items, OpenSetConfig("hard", n_anomalies=2, known_type="hole", seed=42))
    assert {items[i]["specie_name"] for i in split.labelled} == {"hole"} and len(split.labelled) == 2
    tested = [items[i]["specie_name"] for i in split.test]
    assert "hole" not in tested                                   # not even the undrawn hole images
    assert tested.count("scratch") == 4 and tested.count("stain") == 4 and tested.count("good") == 5
    assert split.seen_types == ("hole",) and split.unseen_types == ("scratch", "stain")


@pytest.mark.parametrize("config, message", [
    (dict(setting="hard", n_anomalies=5, known_type="hole"), "only 4 anomalies"),
    (dict(setting="hard", n_anomalies=1, known_type="crack"), "not a defect type"),
    (dict(setting="general", n_anomalies=12), "no anomaly in the test set"),
])
def test_impossible_splits_are_clear_errors(config, message):
    with pytest.raises(ValueError, match=message):
        split_openset(make_items(), OpenSetConfig(**config))


def test_config_validation():
    with pytest.raises(ValueError, match="known_type"):
        OpenSetConfig("hard", n_anomalies=1)
    with pytest.raises(ValueError, match="setting"):
        OpenSetConfig("easy")
    with pytest.raises(ValueError, match="one class"):
        split_openset(make_items() + make_items(cls_name="coin"), OpenSetConfig(n_anomalies=1))
