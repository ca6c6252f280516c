"""MMAD: parameter and FLOP counts against mmad_facts.md, shapes, group scanning, the
release_compat switch, deterministic inference, and a smoke training run through the engine."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mambaad_lib.data.synthetic import make_synthetic_dataset
from mambaad_lib.models import build_mmad
from mambaad_lib.models.mmad import repeated_image_scores
from mambaad_lib.models.mmad_decoder import (
    GroupedStateSpace, HybridStateSpaceModule, TokenGate, hmd_module_drop_paths)
from mambaad_lib.models.mmad_fuser import ChannelAttentionStep, DilatedMambaFuser
from mambaad_lib.models.ss2d import HSSBlock
from mambaad_lib.models.costs import count_flops, count_parameters
from mambaad_lib.scan import scan_directions


# mmad_facts.md section 6: the released model instantiated and counted (no index tables).
FACTS_TOTAL = 24_898_254
FACTS_FLOPS_G = 8.0
INERT_NAMES = ("gate.query.", "gate.key.", "predictor.offsets.")


def small_model(**overrides) -> nn.Module:
    options = dict(backbone="resnet18", depths=(1, 1, 1, 1), image_size=64, scan_backend="auto")
    return build_mmad(**{**options, **overrides})


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on the shared 2-core machine, OpenMP threads spinning at barriers while
    other jobs hold the cores made MMAD steps ~20x slower at two threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def meta_model():
    with torch.device("meta"):
        return build_mmad()


# ---- the analytic count of mmad_facts.md section 6, from its formulas ---------------------


def vss_params(c: int) -> int:
    return 6 * c * c + 32 * c * math.ceil(c / 16) + 826 * c


def predictor_params(C: int, inert: bool) -> int:
    m = C + 2
    q, e = m // 4, m // 8
    offsets = (q + 1) * e + 2 * e + 2
    return (m + 1) * q + 2 * q + (offsets if inert else 0) + (q + 1) * C + 9 * q + 7


def hss_module_params(C: int, inert: bool = True) -> int:
    qk = 2 * (C * C + C)
    return 8 * C * C + 110 * C - (0 if inert else qk) + predictor_params(C, inert) + 12 * vss_params(C // 4)


def test_formulas_reproduce_the_facts_table():
    assert [vss_params(c) for c in (256, 128, 64, 32, 16)] == [735_744, 236_800, 85_632, 34_624, 15_264]
    assert [hss_module_params(C) for C in (512, 256, 128, 64)] == [5_136_841, 1_616_105, 569_977, 225_473]


def test_parameter_count_matches_the_analytic_count(meta_model):
    counts = count_parameters(meta_model)
    assert abs(counts["total"] - FACTS_TOTAL) <= 0.01 * FACTS_TOTAL
    assert counts["frozen"] == 8_170_304
    stages = [sum(p.numel() for p in stage.parameters()) for stage in meta_model.decoder.stages]
    patch_expand = [0] + [8 * C * C + 2 * C for C in (256, 128, 64)]
    modules = [1, 2, 2, 1]
    assert stages == [pe + n * hss_module_params(C) for pe, n, C in zip(patch_expand, modules, (512, 256, 128, 64))]
    assert counts["total"] == FACTS_TOTAL


def test_corrected_model_drops_exactly_the_inert_parameters(meta_model):
    with torch.device("meta"):
        corrected = build_mmad(release_compat=False)
    release_names = dict(meta_model.named_parameters())
    corrected_names = dict(corrected.named_parameters())
    extra = set(release_names) - set(corrected_names)
    assert set(corrected_names) <= set(release_names)
    assert extra and all(any(tag in name for tag in INERT_NAMES) for name in extra)
    inert = sum(release_names[name].numel() for name in extra)
    expected = sum(n * (hss_module_params(C) - hss_module_params(C, inert=False))
                   for n, C in zip((1, 2, 2, 1), (512, 256, 128, 64)))
    assert inert == expected and 0.87e6 < inert < 0.89e6  # "0.88M dead parameters"


def test_flops_within_ten_percent_of_the_reported(meta_model):
    flops = count_flops(meta_model, image_size=256)
    assert abs(flops["total"] - FACTS_FLOPS_G) <= 0.1 * FACTS_FLOPS_G
    # Facts: 0.545 G selective-scan state updates (HMD 0.528, DMF 0.017).
    assert flops["scan_state_updates"] == pytest.approx(0.545, abs=0.001)


# ---- structure and shapes ---------------------------------------------------------------


def test_release_stage_structure_and_drop_paths(meta_model):
    stages = meta_model.decoder.stages
    assert [len(stage.hss_modules) for stage in stages] == [1, 2, 2, 1]
    assert [stage.upsample is not None for stage in stages] == [False, True, True, True]
    for stage in stages:
        for module in stage.hss_modules:
            assert sum(isinstance(m, HSSBlock) for m in module.modules()) == 12
    assert sum(isinstance(m, HSSBlock) for m in meta_model.modules()) == 73  # 72 in the HMD + 1 in the DMF
    rates = hmd_module_drop_paths((3, 4, 6, 3), 0.2)
    expected = [[0.200], [0.160, 0.147], [0.107, 0.093], [0.027]]
    assert [[round(p, 3) for p in stage] for stage in rates] == expected
    for stage, stage_rates in zip(stages, rates):
        for module, rate in zip(stage.hss_modules, stage_rates):
            assert {m.drop_path.p for m in module.modules() if isinstance(m, HSSBlock)} == {rate}


def test_shapes_through_every_stage_at_256(meta_model):
    shapes = {}

    def record(name):
        return lambda module, inputs, output: shapes.__setitem__(name, tuple(output.shape))

    fuser = meta_model.bottleneck
    hooks = [fuser.dilated.register_forward_hook(record("dilated")),
             fuser.attention_step.register_forward_hook(record("mamba+attention")),
             fuser.oce.register_forward_hook(record("oce"))]
    hooks += [stage.register_forward_hook(record(f"stage{i}")) for i, stage in enumerate(meta_model.decoder.stages)]
    encoder, decoder = meta_model(torch.empty(2, 3, 256, 256, device="meta"))
    for hook in hooks:
        hook.remove()
    assert [tuple(f.shape) for f in encoder] == [(2, 64, 64, 64), (2, 128, 32, 32), (2, 256, 16, 16)]
    assert shapes == {"dilated": (2, 256, 16, 16), "mamba+attention": (2, 16, 16, 256), "oce": (2, 512, 8, 8),
                      "stage0": (2, 512, 8, 8), "stage1": (2, 256, 16, 16), "stage2": (2, 128, 32, 32),
                      "stage3": (2, 64, 64, 64)}
    assert [tuple(d.shape) for d in decoder] == [tuple(f.shape) for f in encoder]


def test_real_forward_loss_and_map_at_64():
    model = small_model()
    images = torch.randn(2, 3, 64, 64)
    encoder, decoder = model(images)
    assert [d.shape for d in decoder] == [f.shape for f in encoder]
    loss = model.loss(images)
    loss.backward()
    assert torch.isfinite(loss)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    without_grad = {name for name, p in trainable.items() if p.grad is None}
    # Only the release's inert parameters receive no gradient.
    assert without_grad and all(any(tag in name for tag in INERT_NAMES) for name in without_grad)
    model.eval()
    maps, scores = model.anomaly_map(images)
    assert maps.shape == (2, 1, 64, 64) and torch.equal(scores, maps.amax(dim=(1, 2, 3)))


def test_group_scanning_uses_the_documented_order_per_group(meta_model):
    for stage_index, stage in enumerate(meta_model.decoder.stages):
        for module in stage.hss_modules:
            gss = module.mixer.gss
            assert len(gss.chains) == 4
            for chain in gss.chains:
                assert [dict(block.ss2d.scan_spec) for block in chain] == [{"hilbert": 8}, {"zorder": 8}, {"zigzag": 8}]
                grids = {block.ss2d.grid_size for block in chain}
                assert grids == {(8 << stage_index, 8 << stage_index)}
                assert {block.norm.normalized_shape for block in chain} == {(module.mixer.value.out_channels // 4,)}
    assert dict(meta_model.bottleneck.mamba.ss2d.scan_spec) == {"hilbert": 8}


def test_group_scan_buffers_are_the_documented_orders():
    gss = GroupedStateSpace(16, (4, 4), scan_backend="reference", directions=8)
    for chain in gss.chains:
        for block, name in zip(chain, ("hilbert", "zorder", "zigzag")):
            assert torch.equal(block.ss2d.scan_orders, scan_directions(name, 4, 4, 8))


def test_groups_do_not_mix_before_the_fusion_conv():
    gss = GroupedStateSpace(16, (4, 4), scan_backend="reference").eval()
    with torch.no_grad():
        gss.fuse.weight.copy_(torch.eye(16).view(16, 16, 1, 1))
        gss.fuse.bias.zero_()
    x = torch.randn(1, 16, 4, 4)
    shifted = x.clone()
    shifted[:, :4] += 1.0  # group 0 only
    out, out_shifted = gss(x), gss(shifted)
    assert not torch.allclose(out[:, :4], out_shifted[:, :4])
    torch.testing.assert_close(out[:, 4:], out_shifted[:, 4:], rtol=0, atol=0)


# ---- release_compat: exactly the documented behaviours -------------------------------------


def _shared_pair(cls, *args, **kwargs):
    """A release_compat=True and a False instance with the same (shared) weights."""
    release = cls(*args, release_compat=True, **kwargs)
    corrected = cls(*args, release_compat=False, **kwargs)
    missing, unexpected = corrected.load_state_dict(release.state_dict(), strict=False)
    assert not missing and all(any(tag in name for tag in INERT_NAMES) for name in unexpected)
    return release, corrected


def test_flag_switches_the_fuser_residual_and_attention():
    release, corrected = _shared_pair(DilatedMambaFuser, (64, 128, 256), (4, 4), scan_backend="reference")
    release.eval(), corrected.eval()
    x = torch.randn(2, 4, 4, 256)
    with torch.no_grad():
        # Doubled residual: the release adds LN_a(x) once more.
        torch.testing.assert_close(release.mamba_step(x) - corrected.mamba_step(x), release.mamba_norm(x),
                                   rtol=1e-4, atol=1e-4)
        # Attention: the release adds the weights w, the corrected step adds t * w.
        step = release.attention_step
        t = step.convs(step.norm(x).permute(0, 3, 1, 2))
        w = step.attention(t)
        torch.testing.assert_close(release.attention_step(x), x + w.permute(0, 2, 3, 1).expand_as(x))
        torch.testing.assert_close(corrected.attention_step(x), x + (t * w).permute(0, 2, 3, 1))
        features = [torch.randn(2, 64, 16, 16), torch.randn(2, 128, 8, 8), torch.randn(2, 256, 4, 4)]
        assert not torch.allclose(release(features), corrected(features))


def test_release_attention_step_adds_a_per_channel_constant():
    step = ChannelAttentionStep(32, release_compat=True)
    x = torch.randn(2, 4, 4, 32)
    update = step(x) - x
    assert torch.allclose(update, update[:, :1, :1].expand_as(update))
    assert (update > 0).all() and (update < 1).all()


def test_token_gate_training_is_the_same_gumbel_in_both_modes():
    release, corrected = TokenGate(8, release_compat=True), TokenGate(8, release_compat=False)
    v, sa, probs = torch.randn(2, 8, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(2, 16, 2).softmax(-1)
    torch.manual_seed(3)
    a = release(v, sa, probs)
    torch.manual_seed(3)
    b = corrected(v, sa, probs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_token_gate_inference_release_budget_versus_argmax():
    release = TokenGate(8, release_compat=True).eval()
    corrected = TokenGate(8, release_compat=False).eval()
    probs = torch.rand(2, 16, 2).softmax(-1)
    # Corrected: argmax mask.
    torch.testing.assert_close(corrected.complex_mask(probs), (probs[..., 0] > probs[..., 1]).float())
    # Release: a fresh Gumbel draw sets the budget int(N * r); the highest p[..., 0] keep v.
    torch.manual_seed(5)
    ratio = torch.nn.functional.gumbel_softmax(probs, hard=True, dim=-1)[..., 0].mean()
    kept = int(16 * float(ratio))
    torch.manual_seed(5)
    mask = release.complex_mask(probs)
    assert (mask.sum(dim=1) == kept).all()
    for image in range(2):
        top = probs[image, :, 0].topk(kept).indices
        assert mask[image, top].eq(1).all()


def test_inert_parameters_do_not_change_the_output():
    module = HybridStateSpaceModule(16, (4, 4), release_compat=True, scan_backend="reference")
    x = torch.randn(2, 16, 4, 4)
    torch.manual_seed(1)
    before = module(x)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if any(tag in name for tag in INERT_NAMES):
                parameter.add_(torch.randn_like(parameter))
    torch.manual_seed(1)
    torch.testing.assert_close(module(x), before, rtol=0, atol=0)


# ---- deterministic inference ---------------------------------------------------------------


def test_release_inference_is_stochastic_unless_seeded():
    model = small_model()
    images = torch.randn(1, 3, 64, 64)
    unseeded = repeated_image_scores(model, images, draws=3)
    assert unseeded.shape == (3, 1) and not torch.all(unseeded == unseeded[0])  # fresh Gumbel masks

    model.set_inference_seed(0)
    state = torch.get_rng_state()
    a, score_a = model.anomaly_map(images)
    b, score_b = model.anomaly_map(images)
    assert torch.equal(a, b) and torch.equal(score_a, score_b)
    assert torch.equal(torch.get_rng_state(), state)  # the seeded draw leaves the global RNG alone
    with pytest.raises(ValueError, match="draws"):
        repeated_image_scores(model, images, draws=0)


def test_argmax_inference_is_deterministic_without_seed():
    model = small_model(release_compat=False).eval()
    images = torch.randn(1, 3, 64, 64)
    a, _ = model.anomaly_map(images)
    torch.manual_seed(123)
    b, _ = model.anomaly_map(images)
    assert torch.equal(a, b)


# ---- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("options, match", [
    (dict(image_size=96), "image_size"),
    (dict(image_size=48), "image_size"),
    (dict(depths=(1, 1, 1)), "depths"),
    (dict(group_scans=("hilbert", "spiral")), "scan"),
    (dict(group_scans=()), "group_scans"),
    (dict(dilations=(1, 0)), "dilations"),
    (dict(inference_seed=1.5), "inference_seed"),
    (dict(backbone="vgg"), "backbone"),
])
def test_bad_options_raise_value_errors(options, match):
    with pytest.raises(ValueError, match=match):
        with torch.device("meta"):
            build_mmad(**options)


def test_bad_image_batch_raises():
    model = small_model()
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(1, 1, 64, 64))


# ---- engine ---------------------------------------------------------------------------------


def test_paper_profile_is_the_release_protocol():
    from mambaad_lib.engine.config import load_config

    config = load_config("mmad_paper")
    train = config.train
    assert config.method == "mmad" and config.seed == 42 and config.data.image_size == 256
    assert (train.batch_size, train.epochs, train.lr_step_at, train.lr_step_gamma) == (8, 500, 0.8, 0.1)
    assert train.scaled_lr == pytest.approx(0.0025) and train.weight_decay == 1e-4 and train.grad_clip_norm == 5.0
    assert config.eval.batch_size == 8 and set(config.eval.protocols) == {"standard", "ader"}
    model = config.model
    assert (model.backbone, model.depths, model.group_scans) == ("resnet34", (3, 4, 6, 3),
                                                                 ("hilbert", "zorder", "zigzag"))
    assert model.release_compat and model.encoder_weights == "imagenet"


def test_config_errors_name_the_key():
    from mambaad_lib.engine.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model"):
        load_config("mmad_smoke", {"model.group_scans": ["hilbert", "spiral"]})
    with pytest.raises(ConfigError, match="release_compt"):
        load_config("mmad_smoke", {"model.release_compt": False})


def test_method_predicts_deterministically_and_compares_speed():
    from mambaad_lib.engine.config import load_config
    from mambaad_lib.methods import get_method
    from mambaad_lib.experiments import compare_inference_speed

    config = load_config("mmad_smoke")
    method = get_method("mmad", config.model, image_size=64, device="cpu")
    images = torch.randn(2, 3, 64, 64)
    maps, scores = method.predict(images)
    assert maps.shape == (2, 1, 64, 64) and scores.shape == (2,)
    assert torch.equal(method.predict(images)[0], maps)  # inference_seed 0 in the profile
    speed = compare_inference_speed({"a": method}, images[:1], repeats=1)
    assert set(speed) == {"a"} and speed["a"] > 0


@pytest.mark.slow
def test_smoke_training_run_writes_finite_metrics(tmp_path):
    from mambaad_lib.engine import runner
    from mambaad_lib.engine.config import load_config

    config = load_config("mmad_smoke", {"data.root": str(tmp_path / "data"),
                                        "paths.results_dir": str(tmp_path / "results"),
                                        "paths.runs_dir": str(tmp_path / "runs"),
                                        "train.evaluate_untrained": False})
    make_synthetic_dataset(config.data.root, name=config.data.name, seed=config.synthetic.seed,
                           image_size=config.synthetic.image_size, n_train=config.synthetic.n_train,
                           n_test=config.synthetic.n_test, classes=config.synthetic.classes)
    outcome = runner.train(config, run_id="smoke", progress=False)
    record = json.loads(outcome.results_file.read_text())
    assert record["method"] == "mmad" and record["training"]["steps"] == 4
    assert all(math.isfinite(loss) for loss in record["training"]["epoch_losses"])
    for protocol in ("standard", "ader"):
        values = record["metrics"][protocol]["mean"].values()
        assert all(value is not None and math.isfinite(value) for value in values)
    assert record["model"]["release_compat"] is True and record["model"]["parameters"]["trainable"] > 0
    # The deterministic evaluation reproduces the recorded metrics from the final checkpoint.
    again = runner.evaluate(config, record["training"]["checkpoint"], run_id="again", progress=False)
    assert again.record["metrics"] == record["metrics"]
