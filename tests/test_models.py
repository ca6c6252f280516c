"""MambaAD model: shapes, SS2D semantics, frozen encoder, ablation switches, maps, errors."""
import hashlib
import re
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
import torchvision
from scipy.ndimage import gaussian_filter

import mambaad_lib.models.encoders as encoders
import mambaad_lib.models.ss2d as ss2d_module
from mambaad_lib.models import MambaAD, MambaADConfig, build_mambaad, gaussian_blur, reconstruction_loss
from mambaad_lib.models.decoder import PatchExpand, decoder_drop_paths, split_depth
from mambaad_lib.models.encoders import build_encoder
from mambaad_lib.models.lss import LSSModule
from mambaad_lib.models.ss2d import SS2D
from mambaad_lib.ops import selective_scan
from mambaad_lib.scan import inverse_orders, scan_directions

SMALL = 64  # 64x64 images: 2x2 bottleneck grid, fast with the reference scan


def tiny_model(**overrides):
    """A ResNet18 model with 2 directions and one HSS block per stage, for fast tests at 64x64."""
    kwargs = dict(backbone="resnet18", depths=(1, 1, 1, 1), image_size=SMALL, directions=2, scan_backend="reference")
    return build_mambaad(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_mambaad(image_size=SMALL, scan_backend="reference").eval()


def lss_modules(model):
    return [m for m in model.modules() if isinstance(m, LSSModule)]


def test_forward_shapes_match_the_encoder_features(small_model):
    images = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        encoder_features, decoder_features = small_model(images)
    assert [tuple(f.shape) for f in encoder_features] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert [f.shape for f in decoder_features] == [f.shape for f in encoder_features]
    assert all(torch.isfinite(f).all() for f in decoder_features)


def test_anomaly_map_is_finite_and_the_score_is_its_max():
    images = torch.randn(2, 3, SMALL, SMALL)
    maps, scores = tiny_model().eval().anomaly_map(images)
    assert maps.shape == (2, 1, SMALL, SMALL) and scores.shape == (2,)
    assert torch.isfinite(maps).all() and torch.equal(scores, maps.amax(dim=(1, 2, 3)))
    assert (maps >= 0).all() and (maps <= 2).all()  # 1 - cosine lies in [0, 2]


@pytest.mark.slow
def test_default_model_forward_at_256():
    model = build_mambaad(scan_backend="reference").eval()
    captured = {}
    model.decoder.register_forward_hook(lambda module, inputs, output: captured.update(decoder=output))
    maps, scores = model.anomaly_map(torch.randn(2, 3, 256, 256))  # one forward pass (slow scan)
    assert [tuple(f.shape) for f in captured["decoder"]] == [(2, 64, 64, 64), (2, 128, 32, 32), (2, 256, 16, 16)]
    assert all(torch.isfinite(f).all() for f in captured["decoder"])
    assert maps.shape == (2, 1, 256, 256) and torch.isfinite(maps).all() and torch.isfinite(scores).all()


def test_ss2d_equals_a_loop_over_directions():
    torch.manual_seed(1)
    dim, side, k = 8, 4, 8
    module = SS2D(dim, (side, side), scan={"zigzag": 4, "hilbert": 4}, directions=k, scan_backend="reference")
    x = torch.randn(2, side, side, dim)
    d, n, r = module.d_inner, module.d_state, module.dt_rank
    # Independent evaluation: each direction scanned on its own with its slice of the parameters.
    xz = module.in_proj(x)
    u, z = xz[..., :d], xz[..., d:]
    u = torch.nn.functional.silu(module.conv2d(u.permute(0, 3, 1, 2))).flatten(2)  # (B, d, L)
    orders = scan_directions({"zigzag": 4, "hilbert": 4}, side, side, k)
    merged = torch.zeros_like(u)
    for j in range(k):
        seq = u[..., orders[j]]
        proj = torch.einsum("cd,bdl->bcl", module.x_proj_weight[j], seq)
        dt = torch.einsum("dr,brl->bdl", module.dt_projs_weight[j], proj[:, :r])
        rows = slice(j * d, (j + 1) * d)
        y = selective_scan(seq, dt, -torch.exp(module.A_logs[rows]), proj[:, r:r + n], proj[:, r + n:],
                           D=module.Ds[rows], delta_bias=module.dt_projs_bias[j], delta_softplus=True,
                           backend="reference")
        merged = merged + y[..., inverse_orders(orders[j])]
    merged = merged.transpose(1, 2).reshape(2, side, side, d)
    expected = module.out_proj(module.out_norm(merged) * torch.nn.functional.silu(z))
    assert torch.allclose(module(x), expected, atol=1e-5)


def test_ss2d_parameter_layout_and_initialisation():
    module = SS2D(64, (8, 8), directions=8)
    d, r = 128, 4
    assert module.in_proj.weight.shape == (2 * d, 64) and module.in_proj.bias is None
    assert module.x_proj_weight.shape == (8, r + 32, d)
    assert module.dt_projs_weight.shape == (8, d, r) and module.dt_projs_bias.shape == (8, d)
    assert module.A_logs.shape == (8 * d, 16) and module.Ds.shape == (8 * d,)
    assert torch.allclose(module.A_logs, torch.log(torch.arange(1.0, 17.0)).expand(8 * d, 16))
    assert torch.equal(module.Ds, torch.ones(8 * d))
    dt = torch.nn.functional.softplus(module.dt_projs_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert module.out_norm.eps == 1e-5 and module.scan_orders.shape == (8, 64)
    assert "scan_orders" not in module.state_dict()


def test_ss2d_indexes_other_grid_sizes_on_the_fly():
    module = SS2D(8, (4, 4), scan="sweep", directions=4, scan_backend="reference")
    assert module(torch.randn(1, 8, 8, 8)).shape == (1, 8, 8, 8)


def test_patch_expand_channel_layout():
    module = PatchExpand(8)
    x = torch.randn(2, 3, 5, 8)
    y = module.expand(x)  # (2, 3, 5, 16)
    arranged = torch.zeros(2, 6, 10, 4)
    for p1 in range(2):
        for p2 in range(2):
            arranged[:, p1::2, p2::2] = y[..., (p1 * 2 + p2) * 4:(p1 * 2 + p2 + 1) * 4]
    assert torch.allclose(module(x), module.norm(arranged), atol=1e-6)


def test_release_split_rule_and_drop_path_order():
    assert [split_depth(d) for d in (3, 4, 6, 3)] == [[3], [2, 2], [3, 3], [3]]
    assert split_depth(9) == [3, 3, 3] and split_depth(5) == [2, 2, 1] and split_depth(1) == [1]
    assert split_depth(4, hss_per_lss=3) == [3, 1]
    rates = decoder_drop_paths((3, 4, 6, 3), 0.2)
    flat = [p for stage in rates for p in stage]
    assert [len(stage) for stage in rates] == [3, 4, 6, 3]
    assert flat[0] == pytest.approx(0.2) and flat[-1] == 0.0 and flat == sorted(flat, reverse=True)


def test_default_structure(small_model):
    modules = lss_modules(small_model)
    assert [len(m.hss_blocks) for m in modules] == [3, 2, 2, 3, 3, 3]
    assert all(m.residual and len(m.local_branches) == 2 for m in modules)
    assert [b.kernel_size for b in modules[0].local_branches] == [5, 7]
    assert modules[0].fuse.in_channels == 3 * 512 and modules[-1].fuse.in_channels == 3 * 64


@pytest.mark.parametrize("switch, check", [
    (dict(hss_per_lss=1, depths=(3, 2, 1, 1)), lambda ms: [len(m.hss_blocks) for m in ms] == [1] * 7),
    (dict(hss_per_lss=3, depths=(3, 2, 1, 1)), lambda ms: [len(m.hss_blocks) for m in ms] == [3, 2, 1, 1]),
    (dict(hss_per_lss=None, depths=(3, 2, 1, 1)), lambda ms: [len(m.hss_blocks) for m in ms] == [3, 2, 1, 1]),
    (dict(lss_residual=False), lambda ms: not any(m.residual for m in ms)),
    (dict(local_conv="dw"), lambda ms: all(len(b) == 1 and b[0][0].groups == b[0][0].in_channels
                                            for m in ms for b in m.local_branches)),
    (dict(local_kernels=(3, 5, 7)), lambda ms: all(m.fuse.in_channels == 4 * m.fuse.out_channels for m in ms)),
    (dict(local_kernels=()), lambda ms: all(m.fuse.in_channels == m.fuse.out_channels
                                            and len(m.local_branches) == 0 for m in ms)),
    (dict(directions=4), lambda ms: all(m.hss_blocks[0].ss2d.x_proj_weight.shape[0] == 4 for m in ms)),
])
def test_ablation_switches_change_the_structure(switch, check):
    model = tiny_model(**switch)
    assert check(lss_modules(model))
    with torch.no_grad():
        _, decoder_features = model.eval()(torch.randn(1, 3, SMALL, SMALL))
    assert decoder_features[0].shape == (1, 64, 16, 16)


def test_lss_residual_adds_the_input():
    torch.manual_seed(3)
    with_residual = LSSModule(8, (4, 4), drop_paths=[0.0], scan="sweep", directions=2, scan_backend="reference")
    without = LSSModule(8, (4, 4), drop_paths=[0.0], residual=False, scan="sweep", directions=2,
                        scan_backend="reference")
    without.load_state_dict(with_residual.state_dict())
    x = torch.randn(2, 4, 4, 8)
    assert torch.allclose(with_residual(x), without(x) + x, atol=1e-6)


def test_scan_mapping_builds_the_mixed_directions():
    model = tiny_model(scan={"zigzag": 4, "hilbert": 4}, directions=8)
    ss2d = next(m for m in model.modules() if isinstance(m, SS2D))
    side = ss2d.grid_size[0]
    assert torch.equal(ss2d.scan_orders, scan_directions({"zigzag": 4, "hilbert": 4}, side, side, 8))


def test_encoder_stays_frozen_and_in_eval_under_train():
    model = tiny_model()
    model.train()
    assert not model.encoder.training and all(not m.training for m in model.encoder.modules())
    assert model.decoder.training and model.bottleneck.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.loss(torch.randn(1, 3, SMALL, SMALL)).backward()
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.bottleneck.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_loss_is_the_weighted_sum_of_scale_mses():
    model = tiny_model().eval()
    images = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        encoder_features, decoder_features = model(images)
        expected = 5.0 * sum(((e - d) ** 2).mean() for e, d in zip(encoder_features, decoder_features))
        assert torch.allclose(model.loss(images), expected)
        assert torch.allclose(reconstruction_loss(encoder_features, decoder_features, weight=1.0), expected / 5)


def test_batchnorm_reestimation_fixes_feature_scales():
    torch.manual_seed(0)
    model = tiny_model(backbone="resnet34")
    images = torch.randn(8, 3, SMALL, SMALL)
    bn = model.encoder.layer3[0].bn1
    mean_before = bn.running_mean.clone()
    with torch.no_grad():
        f3_before = model.encoder(images)[2]
    used = model.reestimate_encoder_batchnorm([images[:4], images[4:]])
    assert used == 8 and not model.encoder.training and bn.momentum == 0.1
    assert not torch.equal(bn.running_mean, mean_before)
    with torch.no_grad():
        f3_after = model.encoder(images)[2]
    # Re-estimated statistics normalise every layer's input: features of order one.
    assert 0.1 < f3_after.abs().mean() < 10 < f3_before.abs().mean()
    # The statistics are those of the images: the stem's BN sees its input standardised.
    with torch.no_grad():
        stem = model.encoder.conv1(images)
    assert torch.allclose(model.encoder.bn1.running_mean, stem.mean(dim=(0, 2, 3)), atol=1e-4)


def test_batchnorm_reestimation_rejects_bad_batches_and_keeps_the_stats():
    model = tiny_model()
    before = model.encoder.bn1.running_var.clone()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.reestimate_encoder_batchnorm([torch.randn(2, 3, SMALL, SMALL), torch.randn(2, 1, SMALL, SMALL)])
    assert torch.equal(model.encoder.bn1.running_var, before)
    with pytest.raises(ValueError, match="no image batches"):
        model.reestimate_encoder_batchnorm([])


def test_set_scan_backend_reaches_every_ss2d_call(monkeypatch):
    model = tiny_model(depths=(2, 1, 1, 1)).eval()
    seen = []

    def recording_scan(*args, backend, **kwargs):
        seen.append(backend)
        return selective_scan(*args, backend="reference", **kwargs)

    monkeypatch.setattr(ss2d_module, "selective_scan", recording_scan)
    model.set_scan_backend("chunked")
    assert model.scan_backend == "chunked" and model.config.scan_backend == "chunked"
    assert all(m.scan_backend == "chunked" for m in model.modules() if isinstance(m, SS2D))
    with torch.no_grad():
        model(torch.randn(1, 3, SMALL, SMALL))
    assert len(seen) == 5 and set(seen) == {"chunked"}  # one call per HSS block
    with pytest.raises(ValueError, match="scan_backend must be"):
        model.set_scan_backend("gpu-magic")


def test_config_round_trip_rebuilds_the_same_model():
    torch.manual_seed(5)
    model = tiny_model(depths=(2, 2, 2, 2), scan={"scan": 2, "hilbert": 2}, directions=4, local_kernels=(3,))
    config = asdict(model.config)
    torch.manual_seed(5)
    again = MambaAD.from_config(config)
    torch.manual_seed(5)
    third = build_mambaad(**config)
    assert again.config == model.config == third.config
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())
    assert state.keys() == third.state_dict().keys()


def test_encoder_weights_from_a_local_file(tmp_path):
    torch.manual_seed(7)
    full = torchvision.models.resnet34(weights=None)  # has layer4 and fc: extra keys are ignored
    path = tmp_path / "resnet34.pth"
    torch.save(full.state_dict(), path)
    encoder = build_encoder("resnet34", str(path))
    assert torch.equal(encoder.layer3[5].conv2.weight, full.layer3[5].conv2.weight)
    assert torch.equal(encoder.bn1.running_var, full.bn1.running_var)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, wrapped)
    assert torch.equal(build_encoder("resnet34", wrapped).conv1.weight, full.conv1.weight)
    with pytest.raises(ValueError, match="lacks 84 resnet50 encoder keys"):
        build_encoder("resnet50", str(path))
    resnet50 = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), resnet50)
    with pytest.raises(ValueError, match="does not fit a wide_resnet50_2 encoder: shapes differ"):
        build_encoder("wide_resnet50_2", resnet50)
    with pytest.raises(FileNotFoundError, match="encoder_weights file not found"):
        build_encoder("resnet34", str(tmp_path / "missing.pth"))


def test_imagenet_weights_offline_name_the_local_path_option(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="encoder_weights='/path/to/resnet18"):
        build_encoder("resnet18", "imagenet")


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (64, 64), (5, 7)])
def test_gaussian_blur_equals_scipy(shape):
    maps = torch.rand(*shape, dtype=torch.float64)
    batched = maps.reshape(-1, 1, *shape[-2:])
    expected = np.stack([gaussian_filter(m[0].numpy(), sigma=4) for m in batched])
    assert np.abs(gaussian_blur(batched, 4.0).numpy()[:, 0] - expected).max() < 1e-10


@pytest.mark.parametrize("kwargs, message", [
    (dict(backbone="vgg16"), "backbone must be one of"),
    (dict(scan="spiral"), "scan must be one of"),
    (dict(scan={"zigzag": 3, "hilbert": 2}), "sum to one of"),
    (dict(directions=3), "directions must be one of"),
    (dict(image_size=100), "image_size must be a multiple of 32"),
    (dict(image_size=32), "image_size must be a multiple of 32 and at least 64"),
    (dict(image_size=96), "image_size 96x96 gives decoder grids 3x3"),
    (dict(depths=(3, 4, 6)), "depths must be 4 integers"),
    (dict(depths=(3, 4, 0, 3)), "positive integer"),
    (dict(hss_per_lss=4), "hss_per_lss must be"),
    (dict(local_conv="conv3x3"), "local_conv must be one of"),
    (dict(local_kernels=(4, 6)), "local_kernels must be distinct positive odd"),
    (dict(scan_backend="tpu"), "scan_backend must be"),
    (dict(drop_path_rate=1.5), "drop_path_rate must be"),
])
def test_bad_configs_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MambaADConfig(**kwargs)


def test_non_power_of_two_sizes_work_for_sweep():
    model = tiny_model(image_size=96, scan="sweep").eval()
    with torch.no_grad():
        _, decoder_features = model(torch.randn(1, 3, 96, 96))
    assert decoder_features[2].shape == (1, 256, 6, 6) and decoder_features[0].shape == (1, 64, 24, 24)
    with pytest.raises(ValueError, match="at least 64"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("images, message", [
    (torch.randn(3, SMALL, SMALL), r"images must be a \(B, 3, H, W\)"),
    (torch.randn(1, 1, SMALL, SMALL), r"images must be a \(B, 3, H, W\)"),
    (torch.randn(1, 3, 48, 64), "multiples of 32"),
    (torch.randn(1, 3, 64, 128), "images 64x128 .* cannot traverse"),
    (torch.randn(1, 3, 96, 96), "images 96x96"),
])
def test_bad_images_raise_value_errors(small_model, images, message):
    with pytest.raises(ValueError, match=message):
        small_model(images)


# ---- encoder weights: the release's timm files, torchvision's, local files ---------------------

@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty torch hub cache in tmp_path; any download attempt fails (no network in tests)."""
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def offline(url, *args, **kwargs):
        raise OSError(f"network is unreachable ({url})")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return hub / "checkpoints"


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _nested(module):
    """``module`` buried inside a container, as an encoder sits inside a model."""
    return torch.nn.Sequential(torch.nn.Identity(), torch.nn.ModuleList([module]))


def test_release_weights_are_timm_files_named_with_their_hash():
    assert encoders.published_weights("resnet34", "imagenet").file_name == "resnet34-43635321.pth"
    for backbone in encoders.ENCODERS:
        for choice in encoders.WEIGHT_CHOICES:
            weights = encoders.published_weights(backbone, choice)
            assert re.fullmatch(r"[a-z0-9_]+-[0-9a-f]{8}\.pth", weights.file_name), weights.file_name
            assert weights.name_hash == weights.file_name[-12:-4]
        assert (encoders.published_weights(backbone, "imagenet").file_name
                != encoders.published_weights(backbone, "torchvision").file_name)
    with pytest.raises(ValueError, match="choice must be one of"):
        encoders.published_weights("resnet34", "timm")


def test_imagenet_loads_the_release_file_from_the_hub_cache_and_records_its_sha(hub_cache):
    torch.manual_seed(3)
    timm_like = torchvision.models.resnet34(weights=None)  # timm's key names are torchvision's
    path = hub_cache / "resnet34-43635321.pth"
    torch.save(timm_like.state_dict(), path, _use_new_zipfile_serialization=False)  # timm's file is legacy
    with pytest.warns(UserWarning, match="does not start with 43635321"):
        encoder = build_encoder("resnet34", "imagenet")
    assert torch.equal(encoder.layer3[5].bn2.running_mean, timm_like.layer3[5].bn2.running_mean)
    info = encoder.weights_info
    assert (info.choice, info.file_name, info.sha256) == ("imagenet", path.name, _sha256(path))
    assert info.sha256_matches_name is False and "timm 0.8.15.dev0" in info.source
    assert info.url.endswith("/v0.1-weights/resnet34-43635321.pth")
    assert encoders.encoder_weights_info(_nested(encoder)) == info
    assert info.as_dict()["sha256"] == info.sha256


def test_a_cached_file_whose_sha_matches_its_name_loads_without_warning(hub_cache, monkeypatch, recwarn):
    state = torchvision.models.resnet18(weights=None).state_dict()
    scratch = hub_cache.parent / "scratch.pth"
    torch.save(state, scratch)
    sha = _sha256(scratch)
    scratch.rename(hub_cache / f"resnet18-{sha[:8]}.pth")
    spec = encoders.ENCODERS["resnet18"]
    monkeypatch.setitem(encoders.ENCODERS, "resnet18",
                        replace(spec, release_url=f"https://example.invalid/resnet18-{sha[:8]}.pth"))
    info = build_encoder("resnet18", "imagenet").weights_info
    assert info.sha256 == sha and info.sha256_matches_name is True
    assert not [w for w in recwarn if "SHA-256" in str(w.message)]


def test_torchvision_choice_keeps_the_old_weights(hub_cache):
    torch.manual_seed(4)
    net = torchvision.models.resnet18(weights=None)
    expected = encoders.published_weights("resnet18", "torchvision")
    torch.save(net.state_dict(), hub_cache / expected.file_name)
    with pytest.warns(UserWarning, match="SHA-256"):
        encoder = build_encoder("resnet18", "torchvision")
    assert torch.equal(encoder.conv1.weight, net.conv1.weight)
    assert encoder.weights_info.choice == "torchvision"
    assert encoder.weights_info.source == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert encoder.weights_info.file_name == expected.file_name


def test_wrong_or_missing_release_files_name_the_file(hub_cache):
    path = hub_cache / "resnet34-43635321.pth"
    with pytest.raises(RuntimeError) as error:
        build_encoder("resnet34", "imagenet")
    message = str(error.value)
    assert "resnet34-43635321.pth is not in the torch hub cache" in message
    assert str(hub_cache) in message and "encoder_weights='/path/to/resnet34-43635321.pth'" in message
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)  # a ResNet-18 under ResNet-34's name
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"resnet34-43635321\.pth lacks .* resnet34"):
        build_encoder("resnet34", "imagenet")
    path.write_bytes(b"<html>rate limited</html>")  # e.g. an error page saved under the file's name
    with pytest.raises(ValueError, match=r"resnet34-43635321\.pth is not a readable PyTorch weights file"):
        build_encoder("resnet34", "imagenet")


def test_local_files_and_random_encoders_record_their_facts(tmp_path):
    path = tmp_path / "my_resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    info = build_encoder("resnet18", path).weights_info
    assert (info.choice, info.file_name, info.sha256, info.url) == ("file", "my_resnet18.pth", _sha256(path), None)
    assert build_encoder("resnet18").weights_info == encoders.RANDOM_WEIGHTS
    assert encoders.encoder_weights_info(torch.nn.Linear(2, 2)) is None
    mixed = torch.nn.ModuleList([build_encoder("resnet18"), build_encoder("resnet18", path)])
    with pytest.raises(ValueError, match="different weights"):
        encoders.encoder_weights_info(mixed)
