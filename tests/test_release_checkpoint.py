"""Loading the authors' released MambaAD checkpoints (mambaad_lib.models.release).

No released file can be downloaded here, so a fake one is generated from the facts file
(`shared/reference/release_checkpoint.md`, section 2): its key names, shapes and dtypes come
from the tables there, written out below independently of our model's state dict, and its
values are seeded random numbers (Hilbert index tensors follow the facts' rule). The
generator is checked against the facts' key counts (594 / 588) and parameter totals
(section 4) before anything is loaded, so a wrong mapping in the loader cannot be hidden by
a generator derived from our own model.

Equivalence is tested three ways: every key is consumed except the documented ones (a);
every loaded tensor influences the outputs (b); re-export round-trips bit-exactly (c); and
the loaded model computes what the release computes, by comparison with a functional
forward pass written from the facts file with the release's key names, which catches
mappings that are shape-compatible but wrong (conv31 vs convf, conv1b5 vs conv1b3, the
direction order).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from mambaad_lib.models import build_mambaad, export_release_state_dict, load_release_checkpoint, load_release_weights
from mambaad_lib.models.release import (
    COMPANION_CHECKPOINT,
    DIRECTION_STACKED,
    OURS_TO_RELEASE,
    COMPANION_STATE_DICT,
    RELEASE_STATE_DICT,
    RELEASE_TRAINING_CHECKPOINT,
    UNKNOWN_FORMAT,
    _permute_directions,
    detect_checkpoint_format,
)
from mambaad_lib.engine.release import release_checkpoint_for_engine
from mambaad_lib.models.ss2d import SS2D
from mambaad_lib.ops import available_backends, selective_scan

ADER, MAMBAAD_CODE = "ader", "mambaad"
FAST_BACKEND = "cpu" if "cpu" in available_backends("cpu") else "reference"

# ---- the facts file, section 2, as a generator ---------------------------------------------


def hilbert_cells(side: int) -> list[tuple[int, int]]:
    """(a, b) of each curve position, numpy-hilbert-curve's orientation (recursive quadrant construction)."""
    if side == 1:
        return [(0, 0)]
    half = side // 2
    sub = hilbert_cells(half)
    return ([(b, a) for a, b in sub] + [(a, b + half) for a, b in sub]
            + [(a + half, b + half) for a, b in sub] + [(side - 1 - b, half - 1 - a) for a, b in sub])


def release_index(side: int) -> tuple[Tensor, Tensor]:
    """index_flat[p] = a + s*b of the p-th Hilbert cell, and its argsort (facts 2.3)."""
    flat = torch.tensor([a + side * b for a, b in hilbert_cells(side)], dtype=torch.int64)
    return flat, torch.argsort(flat)


def bn_keys(prefix: str, channels: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


STAGES = [  # (C, HSS blocks per LSS module, scan side), facts 2.3
    (512, [3], 8), (256, [2, 2], 16), (128, [3, 3], 32), (64, [3], 64)]


def release_key_table(version: str) -> dict[str, tuple]:
    """Every key of a released state dict and its shape (int64 for index/num_batches_tracked keys)."""
    table: dict[str, tuple] = {"net_t.conv1.weight": (64, 3, 7, 7), **bn_keys("net_t.bn1", 64)}
    in_channels = 64
    for layer, (channels, blocks) in enumerate(zip((64, 128, 256), (3, 4, 6)), start=1):
        for b in range(blocks):
            p = f"net_t.layer{layer}.{b}"
            table[f"{p}.conv1.weight"] = (channels, in_channels if b == 0 else channels, 3, 3)
            table.update(bn_keys(f"{p}.bn1", channels))
            table[f"{p}.conv2.weight"] = (channels, channels, 3, 3)
            table.update(bn_keys(f"{p}.bn2", channels))
            if b == 0 and layer > 1:
                table[f"{p}.downsample.0.weight"] = (channels, in_channels, 1, 1)
                table.update(bn_keys(f"{p}.downsample.1", channels))
        in_channels = channels
    for b in range(3):
        p = f"mff_oce.bn_layer.{b}"
        table[f"{p}.conv1.weight"] = (128, 256 if b == 0 else 512, 1, 1)
        table.update(bn_keys(f"{p}.bn1", 128))
        table[f"{p}.conv2.weight"] = (128, 128, 3, 3)
        table.update(bn_keys(f"{p}.bn2", 128))
        table[f"{p}.conv3.weight"] = (512, 128, 1, 1)
        table.update(bn_keys(f"{p}.bn3", 512))
        if b == 0:
            table[f"{p}.downsample.0.weight"] = (512, 256, 1, 1)
            table.update(bn_keys(f"{p}.downsample.1", 512))
    table["mff_oce.conv1.weight"] = (128, 64, 3, 3)
    table.update(bn_keys("mff_oce.bn1", 128))
    table["mff_oce.conv2.weight"] = (256, 128, 3, 3)
    table.update(bn_keys("mff_oce.bn2", 256))
    for conv, bn, channels in (("conv21", "bn21", 128), ("conv31", "bn31", 256), ("convf", "bnf", 256)):
        table[f"mff_oce.{conv}.weight"], table[f"mff_oce.{conv}.bias"] = (channels, channels, 1, 1), (channels,)
        table.update(bn_keys(f"mff_oce.{bn}", channels))
    wrappers = ("conv1b3", "conv1a3") if version == ADER else ("conv1b7", "conv1a7")
    for i, (c, modules, side) in enumerate(STAGES):
        r, d = math.ceil(c / 16), 2 * c
        for j, blocks in enumerate(modules):
            m = f"net_s.layers_up.{i}.blocks.{j}"
            for k in range(blocks):
                p, q = f"{m}.smm_blocks.{k}", f"{m}.smm_blocks.{k}.self_attention"
                table.update({f"{p}.ln_1.weight": (c,), f"{p}.ln_1.bias": (c,),
                              f"{q}.x_proj_weight": (8, r + 32, d), f"{q}.dt_projs_weight": (8, d, r),
                              f"{q}.dt_projs_bias": (8, d), f"{q}.A_logs": (8 * d, 16), f"{q}.Ds": (8 * d,),
                              f"{q}.in_proj.weight": (2 * d, c), f"{q}.conv2d.weight": (d, 1, 3, 3),
                              f"{q}.conv2d.bias": (d,), f"{q}.out_norm.weight": (d,), f"{q}.out_norm.bias": (d,),
                              f"{q}.out_proj.weight": (c, d), f"{q}.scans.index_flat": (1, 1, side * side),
                              f"{q}.scans.index_flat_inv": (1, 1, side * side)})
            for name in (wrappers[0], wrappers[1], "conv1b5", "conv1a5"):
                table[f"{m}.{name}.0.weight"], table[f"{m}.{name}.0.bias"] = (c, c, 1, 1), (c,)
            if version == ADER:
                table[f"{m}.conv33.0.weight"] = (c, 1, 3, 3)
            table[f"{m}.conv55.0.weight"], table[f"{m}.conv77.0.weight"] = (c, 1, 5, 5), (c, 1, 7, 7)
            table[f"{m}.finalconv11.weight"], table[f"{m}.finalconv11.bias"] = (c, 3 * c, 1, 1), (c,)
        if i > 0:
            table.update({f"net_s.layers_up.{i}.upsample.expand.weight": (4 * c, 2 * c),
                          f"net_s.layers_up.{i}.upsample.norm.weight": (c,),
                          f"net_s.layers_up.{i}.upsample.norm.bias": (c,)})
    return table


def is_integer_key(key: str) -> bool:
    return key.endswith(("num_batches_tracked", "index_flat", "index_flat_inv"))


def is_buffer_key(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


@lru_cache(maxsize=None)
def _fake_release_state(version: str, seed: int) -> dict[str, Tensor]:
    """Seeded random values with the release's keys, shapes and dtypes; scales keep a 256x256 forward finite."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in release_key_table(version).items():
        if key.endswith("num_batches_tracked"):
            value = torch.randint(0, 10_000, shape, generator=generator, dtype=torch.int64)
        elif key.endswith(("index_flat", "index_flat_inv")):
            flat, inverse = release_index(math.isqrt(shape[-1]))
            value = (inverse if key.endswith("_inv") else flat).reshape(shape)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith("A_logs"):
            value = torch.log(1 + 15 * torch.rand(shape, generator=generator))
        elif key.endswith("dt_projs_bias"):
            value = torch.randn(shape, generator=generator) - 3.0
        elif len(shape) == 1 and key.endswith(".weight"):  # norm scales
            value = 0.5 + 0.5 * torch.rand(shape, generator=generator)
        elif len(shape) <= 1:  # biases, running means, Ds
            value = 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) == 4 else shape[-1]
            value = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        state[key] = value
    return state


def fake_release_state(version: str, seed: int = 0) -> dict[str, Tensor]:
    """A fresh dict (tensors shared, read-only by convention) of the cached fake state."""
    return dict(_fake_release_state(version, seed))


def numel(state: dict[str, Tensor], select: Callable[[str], bool]) -> int:
    return sum(value.numel() for key, value in state.items() if select(key))


# ---- the release's forward pass, written from the facts file (release key names) ----------


def conv_bn_relu(state, x, conv, bn, stride=1):
    weight = state[f"{conv}.weight"]
    x = F.conv2d(x, weight, state.get(f"{conv}.bias"), stride=stride, padding=weight.shape[-1] // 2)
    x = F.batch_norm(x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
                     state[f"{bn}.bias"], training=False, eps=1e-5)
    return F.relu(x)


def release_bottleneck_block(state, x, p, stride):
    out = conv_bn_relu(state, x, f"{p}.conv1", f"{p}.bn1")
    out = conv_bn_relu(state, out, f"{p}.conv2", f"{p}.bn2", stride=stride)
    out = F.conv2d(out, state[f"{p}.conv3.weight"])
    out = F.batch_norm(out, state[f"{p}.bn3.running_mean"], state[f"{p}.bn3.running_var"], state[f"{p}.bn3.weight"],
                       state[f"{p}.bn3.bias"], training=False, eps=1e-5)
    if f"{p}.downsample.0.weight" in state:
        x = F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride)
        x = F.batch_norm(x, *(state[f"{p}.downsample.1.{n}"] for n in ("running_mean", "running_var", "weight",
                                                                          "bias")), training=False, eps=1e-5)
    return F.relu(out + x)


def release_mff_oce(state, f1, f2, f3):
    p2 = conv_bn_relu(state, f2, "mff_oce.conv21", "mff_oce.bn21") + conv_bn_relu(state, f1, "mff_oce.conv1",
                                                                                  "mff_oce.bn1", stride=2)
    p3 = conv_bn_relu(state, p2, "mff_oce.conv2", "mff_oce.bn2", stride=2) + conv_bn_relu(
        state, f3, "mff_oce.conv31", "mff_oce.bn31")
    x = conv_bn_relu(state, p3, "mff_oce.convf", "mff_oce.bnf")
    for b in range(3):
        x = release_bottleneck_block(state, x, f"mff_oce.bn_layer.{b}", stride=2 if b == 0 else 1)
    return x


def release_views(x):
    """The four views of (B, d, H, W): identity, H/W transpose, rot90, transpose of rot90."""
    rotated = torch.rot90(x, 1, (2, 3))
    return [x, x.transpose(2, 3), rotated, rotated.transpose(2, 3)]


def release_unviews(ys):
    """Each view's (B, d, H, W) output back on the original grid."""
    return [ys[0], ys[1].transpose(2, 3), torch.rot90(ys[2], -1, (2, 3)),
            torch.rot90(ys[3].transpose(2, 3), -1, (2, 3))]


def release_ss2d(state, q, x, index_flat, index_flat_inv):
    """(B, H, W, C) -> (B, H, W, C): 4 views forward (k=0..3), the same reversed (k=4..7), summed back."""
    batch, height, width, _ = x.shape
    xz = x @ state[f"{q}.in_proj.weight"].T
    d = xz.shape[-1] // 2
    xs, z = xz[..., :d], xz[..., d:]
    xs = F.silu(F.conv2d(xs.permute(0, 3, 1, 2), state[f"{q}.conv2d.weight"], state[f"{q}.conv2d.bias"],
                         padding=1, groups=d))
    forward = [view.flatten(2)[..., index_flat] for view in release_views(xs)]  # 4 x (B, d, L)
    seqs = torch.stack(forward + [s.flip(-1) for s in forward], dim=1)  # (B, 8, d, L)
    length = height * width
    r = state[f"{q}.dt_projs_weight"].shape[-1]
    x_dbl = torch.einsum("bkdl,kcd->bkcl", seqs, state[f"{q}.x_proj_weight"])
    dts, bs, cs = x_dbl[:, :, :r], x_dbl[:, :, r:r + 16], x_dbl[:, :, r + 16:]
    dts = torch.einsum("bkrl,kdr->bkdl", dts, state[f"{q}.dt_projs_weight"])
    ys = selective_scan(seqs.reshape(batch, 8 * d, length), dts.reshape(batch, 8 * d, length),
                        -torch.exp(state[f"{q}.A_logs"]), bs.contiguous(), cs.contiguous(), D=state[f"{q}.Ds"],
                        delta_bias=state[f"{q}.dt_projs_bias"].reshape(-1), delta_softplus=True,
                        backend=FAST_BACKEND).view(batch, 8, d, length)
    ys = ys[:, :4] + ys[:, 4:].flip(-1)
    grids = [ys[:, v][..., index_flat_inv].view(batch, d, height, width) for v in range(4)]
    y = sum(release_unviews(grids)).permute(0, 2, 3, 1)  # (B, H, W, d)
    y = F.layer_norm(y, (d,), state[f"{q}.out_norm.weight"], state[f"{q}.out_norm.bias"], 1e-5) * F.silu(z)
    return y @ state[f"{q}.out_proj.weight"].T


def conv_in_silu(state, x, name, groups=1):
    weight = state[f"{name}.0.weight"]
    x = F.conv2d(x, weight, state.get(f"{name}.0.bias"), padding=weight.shape[-1] // 2, groups=groups)
    return F.silu(F.instance_norm(x, eps=1e-5))


def release_lss(state, m, x, blocks, version, index):
    c = x.shape[-1]
    g = x
    for k in range(blocks):
        p = f"{m}.smm_blocks.{k}"
        normed = F.layer_norm(g, (c,), state[f"{p}.ln_1.weight"], state[f"{p}.ln_1.bias"], 1e-5)
        g = g + release_ss2d(state, f"{p}.self_attention", normed, *index)
    before, after = ("conv1b3", "conv1a3") if version == ADER else ("conv1b7", "conv1a7")
    x_chw = x.permute(0, 3, 1, 2)
    local5 = conv_in_silu(state, conv_in_silu(state, conv_in_silu(state, x_chw, f"{m}.conv1b5"), f"{m}.conv55", c),
                          f"{m}.conv1a5")
    local7 = conv_in_silu(state, conv_in_silu(state, conv_in_silu(state, x_chw, f"{m}.{before}"), f"{m}.conv77", c),
                          f"{m}.{after}")
    out = F.conv2d(torch.cat([g.permute(0, 3, 1, 2), local5, local7], 1), state[f"{m}.finalconv11.weight"],
                   state[f"{m}.finalconv11.bias"]) + x_chw
    return out.permute(0, 2, 3, 1)


def release_upsample(state, u, x):
    batch, height, width, _ = x.shape
    y = x @ state[f"{u}.expand.weight"].T  # (B, H, W, 4C): channel (p1*2+p2)*C + c -> pixel (2h+p1, 2w+p2)
    c = y.shape[-1] // 4
    y = y.view(batch, height, width, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, c)
    return F.layer_norm(y, (c,), state[f"{u}.norm.weight"], state[f"{u}.norm.bias"], 1e-5)


def release_forward(state, images, version):
    """Encoder features [f1, f2, f3] and decoder outputs [stage 3, stage 2, stage 1] of the release model."""
    resnet = torchvision.models.resnet34(weights=None).eval()
    missing, _ = resnet.load_state_dict({k[len("net_t."):]: v for k, v in state.items() if k.startswith("net_t.")},
                                        strict=False)
    assert all(key.startswith(("layer4.", "fc.")) for key in missing)
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
    f1 = resnet.layer1(x)
    f2 = resnet.layer2(f1)
    f3 = resnet.layer3(f2)
    x = release_mff_oce(state, f1, f2, f3).permute(0, 2, 3, 1)
    outputs = []
    for i, (_, modules, _) in enumerate(STAGES):
        if i > 0:
            x = release_upsample(state, f"net_s.layers_up.{i}.upsample", x)
        index = release_index(x.shape[1])
        for j, blocks in enumerate(modules):
            x = release_lss(state, f"net_s.layers_up.{i}.blocks.{j}", x, blocks, version, index)
        outputs.append(x.permute(0, 3, 1, 2))
    return [f1, f2, f3], outputs[1:][::-1]


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ader_state():
    return fake_release_state(ADER)


@pytest.fixture(scope="module")
def model_64():
    """The default architecture at 64x64 (weights are size-independent); tests load into it."""
    return build_mambaad(image_size=64, scan_backend=FAST_BACKEND).eval()


@pytest.fixture(scope="module")
def model_256():
    """The default model at 256x256, the release's size (its index tensors' grids 8..64)."""
    return build_mambaad(scan_backend=FAST_BACKEND).eval()


# ---- the generator against the facts --------------------------------------------------------


def test_hilbert_generator_matches_the_facts_values():
    flat, inverse = release_index(8)
    assert flat[:16].tolist() == [0, 8, 9, 1, 2, 3, 11, 10, 18, 19, 27, 26, 25, 17, 16, 24]
    assert inverse[:16].tolist() == [0, 3, 4, 5, 58, 59, 60, 63, 1, 2, 7, 6, 57, 56, 61, 62]


@pytest.mark.parametrize("version, keys, parameters, all_parameter_numbers, net_s_floats", [
    (ADER, 594, 462, 25_666_624, 15_998_720), (MAMBAAD_CODE, 588, 456, 25_654_528, 15_986_624)])
def test_generated_release_state_has_the_facts_counts(version, keys, parameters, all_parameter_numbers, net_s_floats):
    state = fake_release_state(version)
    assert len(state) == keys
    assert sum(not is_buffer_key(key) for key in state) == parameters
    assert sum(is_buffer_key(key) for key in state) == 132
    assert numel(state, is_buffer_key) == 17_580
    assert numel(state, lambda key: not is_buffer_key(key)) == all_parameter_numbers
    assert numel(state, lambda key: key.startswith("net_t.") and not is_buffer_key(key)) == 8_170_304
    assert numel(state, lambda key: key.startswith("net_t.") and is_buffer_key(key)) == 9_885
    assert numel(state, lambda key: key.startswith("mff_oce.") and not is_buffer_key(key)) == 1_458_304
    assert numel(state, lambda key: key.startswith("mff_oce.") and is_buffer_key(key)) == 7_695
    assert numel(state, lambda key: key.startswith("net_s.") and not is_integer_key(key)) == net_s_floats
    assert numel(state, lambda key: key.endswith(("index_flat", "index_flat_inv"))) == 39_296
    for key, value in state.items():
        assert value.dtype == (torch.int64 if is_integer_key(key) else torch.float32), key


# ---- (a) every key consumed, (c) round trip ----------------------------------------------------


@pytest.mark.parametrize("version, dead", [(ADER, 6), (MAMBAAD_CODE, 0)])
def test_every_release_key_is_consumed_except_the_documented_ones(model_64, version, dead):
    state = fake_release_state(version)
    report = load_release_weights(state, model_64)
    assert report.ok and report.code_version == version and report.file_format == RELEASE_STATE_DICT
    assert set(report.loaded) == set(model_64.state_dict())  # every model tensor comes from the file
    assert report.index_verified == 32
    assert sorted(report.dead_weights) == sorted(key for key in state if ".conv33." in key)
    assert len(report.dead_weights) == dead
    assert len(report.loaded) + report.index_verified + len(report.dead_weights) == len(state)
    assert any("trained at 256x256" in note for note in report.notes)  # a 64x64 model is allowed, and said so
    # Our model's floats are the release's minus conv33 (section 4, MambaAD-code column).
    assert sum(p.numel() for p in model_64.parameters()) == 25_615_232


def test_tensors_land_where_the_mapping_table_says(model_64, ader_state):
    model = model_64
    load_release_weights(ader_state, model)
    lss = model.decoder.stages[1].lss_modules[1]
    pairs = {
        "net_t.layer3.0.downsample.1.running_var": model.encoder.layer3[0].downsample[1].running_var,
        "mff_oce.conv21.weight": model.bottleneck.lateral2[0].weight,
        "mff_oce.convf.bias": model.bottleneck.fuse[0].bias,
        "mff_oce.bn31.weight": model.bottleneck.lateral3[1].weight,
        "mff_oce.bn_layer.2.bn3.running_mean": model.bottleneck.oce[2].bn3.running_mean,
        "net_s.layers_up.1.blocks.1.conv1b3.0.weight": lss.local_branches[1][0][0].weight,
        "net_s.layers_up.1.blocks.1.conv1a5.0.bias": lss.local_branches[0][2][0].bias,
        "net_s.layers_up.1.blocks.1.finalconv11.weight": lss.fuse.weight,
        "net_s.layers_up.1.blocks.1.smm_blocks.1.ln_1.bias": lss.hss_blocks[1].norm.bias,
        "net_s.layers_up.2.upsample.expand.weight": model.decoder.stages[2].upsample.expand.weight,
    }
    for key, ours in pairs.items():
        assert torch.equal(ours, ader_state[key]), key
    # Direction-stacked tensors: our direction j is the release's RELEASE_DIRECTION_INDEX[j].
    ss2d = lss.hss_blocks[1].ss2d
    q = "net_s.layers_up.1.blocks.1.smm_blocks.1.self_attention"
    for ours_j, release_k in enumerate((0, 4, 1, 5, 2, 6, 3, 7)):
        assert torch.equal(ss2d.x_proj_weight[ours_j], ader_state[f"{q}.x_proj_weight"][release_k])
        assert torch.equal(ss2d.dt_projs_bias[ours_j], ader_state[f"{q}.dt_projs_bias"][release_k])
        assert torch.equal(ss2d.A_logs.view(8, 512, 16)[ours_j], ader_state[f"{q}.A_logs"].view(8, 512, 16)[release_k])
        assert torch.equal(ss2d.Ds.view(8, 512)[ours_j], ader_state[f"{q}.Ds"].view(8, 512)[release_k])


@pytest.mark.parametrize("version", [ADER, MAMBAAD_CODE])
def test_export_round_trips_bit_exactly(model_256, version):
    state = fake_release_state(version, seed=1)
    report = load_release_weights(state, model_256)
    exported = export_release_state_dict(model_256, code_version=version, dead_weights=report.dead_weights)
    assert set(exported) == set(state)
    for key, value in state.items():
        assert exported[key].dtype == value.dtype and torch.equal(exported[key], value), key
    zeros = export_release_state_dict(model_256, code_version=ADER)  # conv33 never read: zeros by default
    assert len(zeros) == 594 and all(not v.any() for k, v in zeros.items() if ".conv33." in k)


# ---- the loaded model computes the release's function ------------------------------------------


@pytest.mark.parametrize("version", [ADER, pytest.param(MAMBAAD_CODE, marks=pytest.mark.slow)])
def test_loaded_model_matches_the_release_forward_pass(model_64, version):
    state = fake_release_state(version, seed=2)
    load_release_weights(state, model_64)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours_encoder, ours_decoder = model_64(images)
        release_encoder, release_decoder = release_forward(state, images, version)
    for ours, theirs in zip(ours_encoder + ours_decoder, release_encoder + release_decoder):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert ours_decoder[0].abs().mean() > 0.1  # a non-degenerate comparison


def test_direction_order_with_eight_distinct_directions():
    """Hilbert directions 6, 7 repeat 1, 0, so check the direction permutation on the sweep scan too."""
    ss2d = SS2D(16, (4, 4), scan="sweep", scan_backend="reference")
    release = {f"q.{name}": _permute_directions(value, OURS_TO_RELEASE) if name in DIRECTION_STACKED else value
               for name, value in ss2d.state_dict().items()}
    sweep = torch.arange(16)
    x = torch.randn(2, 4, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(ss2d(x), release_ss2d(release, "q", x, sweep, sweep), rtol=1e-5, atol=1e-5)


# ---- (b) every loaded tensor is used -----------------------------------------------------------


def eval_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Eval-mode batch norm in plain tensor ops: differentiable w.r.t. the running statistics too."""
    assert not training, "the usage check runs BatchNorm in eval mode only"
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - running_mean.view(shape)) / torch.sqrt(running_var.view(shape) + eps) * weight.view(shape) \
        + bias.view(shape)


@pytest.mark.slow
def test_every_loaded_tensor_changes_the_outputs(model_256, ader_state, monkeypatch):
    """(b) at 256x256: every loaded floating-point tensor influences the model's outputs.

    One forward per loaded tensor would be about 550 forwards of several seconds each, so:
    one backward pass of a random projection of all outputs (encoder features f1..f3 and
    decoder outputs d1..d3, what the anomaly map is made of) w.r.t. every loaded tensor; a
    tensor whose gradient is not zero influences the outputs. Two obstacles are removed:
    MambaAD.forward runs the frozen encoder under no_grad, so the test composes encoder ->
    bottleneck -> decoder itself; and torch's batch norm refuses gradients w.r.t. running
    statistics, so F.batch_norm is replaced during that pass by the same eval-mode formula in
    plain tensor ops. Both substitutions are checked: the pass reproduces model(images).
    The gradient criterion is then confirmed by real forward perturbations of a few randomly
    chosen tensors. Not covered, by design: num_batches_tracked (counts training steps, never
    read in eval mode), the index tensors (compared and skipped at load time) and conv33
    (dropped: the release never calls it).
    """
    model = model_256
    report = load_release_weights(ader_state, model)
    used = [key for key in report.loaded if not key.endswith("num_batches_tracked")]
    assert len(report.loaded) - len(used) == 44
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        baseline = [t.clone() for t in sum(model(images), [])]
    probes = [torch.randn_like(t) for t in baseline]

    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    loaded = {key: tensors[key] for key in used}
    flags = {key: tensor.requires_grad for key, tensor in loaded.items()}
    monkeypatch.setattr(F, "batch_norm", eval_batch_norm)
    for tensor in loaded.values():
        tensor.requires_grad_(True)
    try:
        encoder_features = model.encoder(images)
        decoder_features = model.decoder(model.bottleneck(encoder_features))
        outputs = encoder_features + decoder_features
        for output, reference in zip(outputs, baseline):
            torch.testing.assert_close(output.detach(), reference, rtol=1e-4, atol=1e-4)
        sum((output * probe).sum() for output, probe in zip(outputs, probes)).backward()
        unused = [key for key, tensor in loaded.items() if tensor.grad is None or not tensor.grad.any()]
    finally:
        for key, tensor in loaded.items():
            tensor.grad = None
            tensor.requires_grad_(flags[key])
        monkeypatch.undo()
    assert unused == []

    for key in random.Random(0).sample(used, 3):
        tensor = loaded[key]
        original = tensor.detach().clone()
        with torch.no_grad():
            tensor.add_(0.5)
            changed = sum(model(images), [])
            tensor.copy_(original)
        assert any(not torch.allclose(a, b) for a, b in zip(changed, baseline)), key


# ---- strictness and bad input ------------------------------------------------------------------


def broken_state():
    state = fake_release_state(ADER, seed=3)
    del state["mff_oce.convf.bias"]
    state["net_s.layers_up.0.extra.weight"] = torch.zeros(3)
    state["mff_oce.conv21.weight"] = torch.zeros(128, 128, 3, 3)
    index_key = "net_s.layers_up.2.blocks.0.smm_blocks.1.self_attention.scans.index_flat"
    state[index_key] = state[index_key].clone()
    state[index_key][0, 0, [0, 1]] = state[index_key][0, 0, [1, 0]]
    return state


def test_strict_load_lists_every_problem_and_loads_nothing(model_64):
    load_release_weights(fake_release_state(ADER), model_64)
    before = model_64.bottleneck.down1[0].weight.clone()
    with pytest.raises(ValueError) as caught:
        load_release_weights(broken_state(), model_64)
    message = str(caught.value)
    for fragment in ("bottleneck.fuse.0.bias", "net_s.layers_up.0.extra.weight", "mff_oce.conv21.weight",
                     "layers_up.2.blocks.0.smm_blocks.1.self_attention.scans.index_flat", "nothing was loaded",
                     "--non-strict"):
        assert fragment in message
    assert torch.equal(model_64.bottleneck.down1[0].weight, before)


def test_non_strict_loads_what_matches_and_reports_the_rest(model_64):
    state = broken_state()
    report = load_release_weights(state, model_64, strict=False)
    assert not report.ok and len(report.problems()) == 4
    assert report.missing == ["bottleneck.fuse.0.bias"]
    assert report.unknown == ["net_s.layers_up.0.extra.weight"]
    assert len(report.mismatched) == 1 and len(report.index_mismatches) == 1
    assert len(report.loaded) == len(model_64.state_dict()) - 2
    assert torch.equal(model_64.bottleneck.down1[0].weight, state["mff_oce.conv1.weight"])
    assert "NOT LOADED" in report.summary()


def test_architecture_options_the_keys_cannot_show_are_checked():
    model = build_mambaad(image_size=64, lss_residual=False, scan_backend="reference")
    with pytest.raises(ValueError, match="lss_residual"):
        load_release_weights(fake_release_state(ADER), model)


def test_mixed_code_versions_are_rejected(model_64):
    state = fake_release_state(ADER)
    state["net_s.layers_up.0.blocks.0.conv1b7.0.bias"] = torch.zeros(512)
    with pytest.raises(ValueError, match="mixes the two code versions"):
        load_release_weights(state, model_64, strict=False)


def test_training_checkpoint_with_module_prefix_loads_from_a_file(tmp_path, model_64):
    state = fake_release_state(MAMBAAD_CODE, seed=4)
    path = tmp_path / "ckpt.pth"
    torch.save({"net": {f"module.{key}": value for key, value in state.items()},
                "optimizer": {"state": {}, "param_groups": []}, "iter": 10, "epoch": 1, "total_time": 1.5}, path)
    assert detect_checkpoint_format(torch.load(path, weights_only=True)) == RELEASE_TRAINING_CHECKPOINT
    model = load_release_checkpoint(path, model=model_64)
    assert not model.training
    assert torch.equal(model.bottleneck.fuse[0].weight, state["mff_oce.convf.weight"])


def test_our_own_checkpoints_are_recognised_and_refused(tmp_path, model_64):
    from mambaad_lib.engine.checkpoint import save_checkpoint

    ours = tmp_path / "final.pt"
    save_checkpoint(ours, method="mambaad", config={}, model=model_64.state_dict())
    assert detect_checkpoint_format(torch.load(ours, weights_only=True)) == COMPANION_CHECKPOINT
    with pytest.raises(ValueError, match="MambaAD Companion checkpoint.*--checkpoint"):
        load_release_checkpoint(ours, model=model_64)
    bare = tmp_path / "bare.pt"
    torch.save(model_64.state_dict(), bare)
    assert detect_checkpoint_format(torch.load(bare, weights_only=True)) == COMPANION_STATE_DICT
    with pytest.raises(ValueError, match="MambaAD Companion key names.*--checkpoint"):
        load_release_checkpoint(bare, model=model_64)


def test_bad_files_get_clear_errors(tmp_path, model_64):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_release_checkpoint(tmp_path / "missing.pth", model=model_64)
    with pytest.raises(ValueError, match="is not a file"):
        load_release_checkpoint(tmp_path, model=model_64)
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_release_checkpoint(text, model=model_64)
    truncated = tmp_path / "truncated.pth"
    torch.save({key: value for key, value in fake_release_state(ADER).items() if key.startswith("net_t.")}, truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_release_checkpoint(truncated, model=model_64)
    other = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    assert detect_checkpoint_format(torch.load(other, weights_only=True)) == UNKNOWN_FORMAT
    with pytest.raises(ValueError, match=r"not a released MambaAD checkpoint.*conv1\.weight"):
        load_release_checkpoint(other, model=model_64)
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ValueError, match="holds a list"):
        load_release_checkpoint(listing, model=model_64)


def test_release_checkpoint_for_engine_writes_a_checkpoint_the_engine_evaluates(tmp_path):
    from mambaad_lib.engine.checkpoint import FORMAT, load_checkpoint
    from mambaad_lib.engine.config import load_config
    from mambaad_lib.engine.runner import load_for_inference

    state = fake_release_state(ADER, seed=5)
    release_file = tmp_path / "mambaad_mvtec.pth"
    torch.save(state, release_file)
    config = load_config(None, {"data.image_size": 64, "paths.runs_dir": str(tmp_path / "runs"),
                                "model.encoder_weights": "none", "model.scan_backend": FAST_BACKEND})
    converted, report = release_checkpoint_for_engine(release_file, config)
    assert converted == tmp_path / "runs" / "release" / "mambaad_mvtec.pt" and report.ok
    content = load_checkpoint(converted)
    assert content["format"] == FORMAT and content["method"] == "mambaad"
    assert content["extras"]["prepare"]["release_checkpoint"]["code_version"] == ADER
    method, _ = load_for_inference(converted, config)
    assert torch.equal(method.network.bottleneck.lateral3[0].weight, state["mff_oce.conv31.weight"])
    glass = load_config(None, {"method": "glass", "paths.runs_dir": str(tmp_path / "runs")})
    with pytest.raises(ValueError, match="method is 'glass'"):
        release_checkpoint_for_engine(release_file, glass)


def test_cli_points_release_files_and_our_checkpoints_at_the_right_flag(tmp_path, ader_state, capsys):
    """``--checkpoint`` refuses the authors' file with a pointer to ``--release-checkpoint``;
    ``--release-checkpoint`` refuses a file that is not a checkpoint, naming it."""
    from mambaad_lib.cli import main

    release_file = tmp_path / "mambaad_mvtec.pth"
    torch.save({"net": ader_state}, release_file)
    code = main(["evaluate", "--checkpoint", str(release_file), "--profile", "smoke", "--quiet"])
    assert code != 0
    assert "--release-checkpoint" in capsys.readouterr().err

    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("not a checkpoint")
    code = main(["evaluate", "--release-checkpoint", str(not_a_checkpoint), "--profile", "smoke", "--quiet"])
    assert code != 0
    assert "notes.pth" in capsys.readouterr().err
