"""Parameter and FLOP counting.

FLOP rule (the paper's, i.e. fvcore's): one multiply-accumulate = one FLOP, per image:

==================  ==============================================================
Conv2d              output elements x (in_channels / groups) x kh x kw (no bias)
Linear              output elements x in_features (no bias)
SS2D projections    the einsums of x_proj and dt_proj, as matrix products
LayerNorm           5 per input element with affine parameters, 4 without
InstanceNorm        5 per input element with affine parameters, 4 without
BatchNorm (eval)    2 per input element with affine parameters, 1 without
==================  ==============================================================

Activations, additions, pooling and the scan's gathers are not counted. The selective-scan
recurrence is reported apart (``scan``), as mamba-ssm's ``flops_selective_scan_ref`` counts
it: ``9 b d L n`` for the state updates plus ``b d L`` for the D skip.

The counting pass runs the model with every parameter and buffer replaced by a meta tensor
(``torch.func.functional_call``): only shapes propagate, so it takes a fraction of a second
even for the WideResNet50 model, and SS2D skips its (shape-preserving) recurrence on meta.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mambaad_lib.models.ss2d import SS2D

_NORMS = (nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_SCAN_FLOPS_PER_UPDATE = 9


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Floating-point parameters: ``total``, ``trainable`` (requires_grad) and ``frozen``.

    Buffers (BatchNorm statistics, scan index tensors) are not parameters and are not counted.
    """
    params = [p for p in model.parameters() if p.is_floating_point()]
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def _dense_flops(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, _NORMS):
        affine = getattr(module, "elementwise_affine", False) or getattr(module, "affine", False)
        return inputs[0].numel() * (5 if affine else 4)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return inputs[0].numel() * (2 if module.affine else 1)
    if isinstance(module, SS2D):
        batch, height, width, _ = inputs[0].shape
        tokens = batch * module.directions * height * width
        # x_proj (d_inner -> r + 2n) and dt_proj (r -> d_inner) per direction and token.
        return tokens * module.d_inner * (2 * module.dt_rank + 2 * module.d_state)
    return 0


def _scan_flops(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[int, int]:
    """(state updates, FLOPs) of one SS2D's selective-scan recurrence."""
    batch, height, width, _ = inputs[0].shape
    channels_x_length = batch * module.directions * module.d_inner * height * width
    updates = channels_x_length * module.d_state
    return updates, _SCAN_FLOPS_PER_UPDATE * updates + channels_x_length


def count_flops(model: nn.Module, image_size: int = 256, batch_size: int = 1) -> dict[str, object]:
    """FLOPs of one forward pass of ``model`` on (batch_size, 3, image_size, image_size) images.

    Returns:
        dict with ``total`` (GFLOPs of convolutions, linears, SS2D projections and norms),
        ``scan`` (GFLOPs of the selective-scan recurrence, not in total), ``scan_state_updates``
        (in G), and ``by_part`` (GFLOPs per top-level child module, e.g. encoder/bottleneck/decoder).
    """
    dense: dict[str, int] = defaultdict(int)
    scan = {"updates": 0, "flops": 0}
    handles = []

    for name, module in model.named_modules():
        part = name.split(".")[0] or "model"

        def hook(module, inputs, output, part=part):
            dense[part] += _dense_flops(module, inputs, output)
            if isinstance(module, SS2D):
                updates, flops = _scan_flops(module, inputs)
                scan["updates"] += updates
                scan["flops"] += flops

        handles.append(module.register_forward_hook(hook))

    meta_state = {name: torch.empty_like(tensor, device="meta")
                  for name, tensor in list(model.named_parameters()) + list(model.named_buffers())}
    images = torch.empty(batch_size, 3, image_size, image_size, device="meta")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            functional_call(model, meta_state, (images,))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {
        "total": sum(dense.values()) / 1e9,
        "scan": scan["flops"] / 1e9,
        "scan_state_updates": scan["updates"] / 1e9,
        "by_part": {part: flops / 1e9 for part, flops in dense.items() if flops},
    }
