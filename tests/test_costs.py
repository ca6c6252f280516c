"""Parameter and FLOP counts against the paper's Table 2 and hand-counted small cases."""
import ast
import math

import pytest
import torch
from torch import nn

from mambaad_lib.models import build_mambaad
from mambaad_lib.models.decoder import split_depth
from mambaad_lib.paper import paper_table
from mambaad_lib.models.costs import count_flops, count_parameters

BACKBONES = {"ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50",
             "WideResNet50": "wide_resnet50_2"}


def table2_rows():
    """The paper's Table 2 (``paper/backbone_depth.csv``): backbone, depths, params (M), GFLOPs."""
    return [(BACKBONES[row["backbone"]], tuple(ast.literal_eval(row["decoder_depth"])),
             float(row["params_m"]), float(row["flops_g"])) for row in paper_table("backbone_depth")]


def meta_model(**kwargs):
    with torch.device("meta"):
        return build_mambaad(**kwargs)


@pytest.fixture(scope="module")
def default_model():
    return build_mambaad()


def test_default_model_counts(default_model):
    counts = count_parameters(default_model)
    # 17,444,928 is the release's trainable count (release_checkpoint.md, section 4).
    assert counts["trainable"] == 17_444_928
    assert 25.6e6 <= counts["total"] <= 25.7e6
    assert counts["frozen"] == sum(p.numel() for p in default_model.encoder.parameters())
    assert counts["total"] == counts["trainable"] + counts["frozen"]


def test_table2_parameters_and_flops_within_tolerance():
    rows = table2_rows()
    assert len(rows) == 7
    for backbone, depths, params_m, flops_g in rows:
        model = meta_model(backbone=backbone, depths=depths)
        total = count_parameters(model)["total"] / 1e6
        assert abs(total - params_m) / params_m < 0.015, (backbone, depths, total, params_m)
        flops = count_flops(model)["total"]
        assert abs(flops - flops_g) / flops_g < 0.05, (backbone, depths, flops, flops_g)


def test_default_flops_near_the_papers_8_3(default_model):
    flops = count_flops(default_model)
    assert abs(flops["total"] - 8.3) / 8.3 < 0.10
    assert flops["total"] == pytest.approx(sum(flops["by_part"].values()))
    assert set(flops["by_part"]) >= {"encoder", "bottleneck", "decoder"}


def test_scan_cost_is_counted_apart_from_an_independent_formula(default_model):
    # State updates: for every HSS block, K directions x d_inner channels x tokens x d_state.
    dims, grids, depths = (512, 256, 128, 64), (8, 16, 32, 64), (3, 4, 6, 3)
    updates = sum(depth * 8 * 2 * dim * grid * grid * 16 for dim, grid, depth in zip(dims, grids, depths))
    flops = count_flops(default_model)
    assert flops["scan_state_updates"] == pytest.approx(updates / 1e9)
    assert flops["scan"] == pytest.approx((9 * updates + updates / 16) / 1e9)


def test_count_flops_is_per_image_and_scales_with_resolution(default_model):
    at_256 = count_flops(default_model, image_size=256)
    assert count_flops(default_model, image_size=256, batch_size=2)["total"] == pytest.approx(2 * at_256["total"])
    # Every counted operation is proportional to the number of pixels.
    assert count_flops(default_model, image_size=128)["total"] == pytest.approx(at_256["total"] / 4)


def test_count_flops_leaves_the_model_untouched(default_model):
    default_model.train()
    before = {k: v.clone() for k, v in default_model.state_dict().items()}
    count_flops(default_model)
    assert default_model.training and not default_model.encoder.training
    after = default_model.state_dict()
    assert all(v.device.type == "cpu" and torch.equal(before[k], v) for k, v in after.items())
    default_model.eval()


def test_flop_rules_on_a_hand_counted_network():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.InstanceNorm2d(8),
                        nn.Flatten(2), nn.LayerNorm(16 * 16), nn.Linear(16 * 16, 10))
    pixels = 16 * 16
    expected = (8 * pixels * 3 * 9  # conv: outputs x in/groups x k x k
                + 2 * 8 * pixels  # batchnorm with affine: 2 per element
                + 8 * pixels * 1 * 9  # depthwise conv
                + 4 * 8 * pixels  # instance norm without affine: 4 per element
                + 5 * 8 * pixels  # layer norm with affine: 5 per element
                + 8 * 10 * pixels)  # linear: outputs x in_features
    result = count_flops(net, image_size=16)
    assert result["total"] == pytest.approx(expected / 1e9) and result["scan"] == 0


def test_parameter_counts_ignore_buffers_and_follow_the_hss_formula():
    model = meta_model(backbone="resnet18", depths=(3, 4, 6, 3))
    int_buffers = [b for b in model.buffers() if not b.is_floating_point()]
    assert int_buffers, "scan index tensors should be buffers"
    decoder = count_parameters(model.decoder)["total"]
    # Per HSS block 6C^2 + 32 C r + 826 C (release_checkpoint.md 2.3), per LSS 7C^2 + 79C,
    # PatchExpand(2C -> C) 8C^2 + 2C.
    expected = 0
    for stage, (dim, depth) in enumerate(zip((512, 256, 128, 64), (3, 4, 6, 3))):
        rank = math.ceil(dim / 16)
        expected += depth * (6 * dim * dim + 32 * dim * rank + 826 * dim)
        expected += len(split_depth(depth)) * (7 * dim * dim + 79 * dim)
        expected += (8 * dim * dim + 2 * dim) if stage else 0
    assert decoder == expected


def test_frozen_parameters_are_counted_apart():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    net[0].requires_grad_(False)
    assert count_parameters(net) == {"total": 23, "trainable": 8, "frozen": 15}
