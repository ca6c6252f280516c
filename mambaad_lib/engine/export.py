"""``mambaad export``: a MambaAD or MMAD checkpoint as an ONNX model or a ``torch.export`` program.

The exported graph is the whole inference of :meth:`ReconstructionModel.anomaly_map`:
frozen encoder, bottleneck, decoder, ``1 - cos`` maps per scale, bilinear upsampling, their
mean (MambaAD) or sum (MMAD), the Gaussian blur (sigma 4) and the image score (the map's
maximum)::

    input   images        (B, 3, crop, crop) float32, RGB resized to image_size^2 (bilinear),
                          centre-cropped to crop_size, scaled to [0, 1], ImageNet-normalised
    output  anomaly_maps  (B, 1, crop, crop) float32
            scores        (B,) float32

B is dynamic; the image size is fixed at the checkpoint's ``crop_size``. The selective scan
runs on the ``export`` backend (:mod:`mambaad_lib.ops.export`: a log-depth parallel scan of a
few operators per step; the CUDA kernel and the fused CPU kernel cannot be traced, and the
per-step loop would unroll into one graph node group per position). Its results equal the
other backends' up to float32 rounding.

Formats: ``onnx`` (``torch.onnx.export``'s dynamo exporter, needs the ``onnx`` and
``onnxscript`` packages; run it with onnxruntime) and ``pt2`` (``torch.export``'s
ExportedProgram, saved with ``torch.export.save``; load with ``torch.export.load`` and call
``.module()``). TorchScript is deprecated and not offered. Both files carry the facts a
deployment needs as JSON (key :data:`METADATA_KEY`: preprocessing, output layout, the
stored calibration): ONNX metadata properties, or an extra file in the pt2 archive.

MMAD exports only with ``release_compat: false``: the release's model draws a fresh Gumbel
sample of its token budget at every inference forward, which no fixed graph reproduces
(and its inert parameters make the two variants' weights incompatible): train with
``--model.release_compat false`` to export.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mambaad_lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mambaad_lib.engine.predictor import Predictor
from mambaad_lib.models.mambaad import ReconstructionModel
from mambaad_lib.models.mmad import MMAD
from mambaad_lib.utils.files import atomic_write_bytes, ensure_writable_dir

FORMATS = ("onnx", "pt2")
EXPORT_BACKEND = "export"
METADATA_KEY = "mambaad_companion"
EXAMPLE_BATCH = 2  # traced with 2 images: a batch of 1 would be specialised to a constant
PARITY_TOLERANCE = 1e-4


class AnomalyMapGraph(nn.Module):
    """What is exported: ``images (B,3,H,W) -> (anomaly_maps (B,1,H,W), scores (B,))``."""

    def __init__(self, model: ReconstructionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.anomaly_map(images)


@dataclass
class ExportReport:
    """What :func:`export_checkpoint` wrote and how far the exported graph is from eager PyTorch
    on the example batch (None when the runtime to check it is not installed)."""

    path: Path
    format: str
    max_map_difference: float | None
    max_score_difference: float | None
    metadata: dict[str, Any]


def exportable_model(predictor: Predictor) -> ReconstructionModel:
    """The predictor's network, switched to the export scan backend, in eval mode.

    Raises:
        ValueError: a method other than MambaAD/MMAD, or MMAD with ``release_compat``.
    """
    model = predictor.method.network
    name = predictor.config.method
    if not isinstance(model, ReconstructionModel):
        raise ValueError(f"export supports MambaAD and MMAD checkpoints (mambaad, mambaad_las, mmad); "
                         f"this one holds a {name!r} model")
    if isinstance(model, MMAD) and model.config.release_compat:
        raise ValueError("this MMAD checkpoint was trained with release_compat: true, whose inference draws a random "
                         "Gumbel sample at every forward pass (the release's behaviour), so no fixed graph can "
                         "reproduce it, and its extra inert parameters do not fit the corrected model. Export needs "
                         "an MMAD trained with --model.release_compat false")
    model.set_scan_backend(EXPORT_BACKEND)
    if isinstance(model, MMAD):
        model.set_inference_seed(None)  # no random draw without release_compat: no seeded context to trace
    return model.eval()


def deployment_facts(predictor: Predictor) -> dict[str, Any]:
    """The JSON stored with an exported model: what the graph expects and returns."""
    data = predictor.config.data
    calibration = predictor.calibration
    return {"method": predictor.config.method, "checkpoint": str(predictor.checkpoint),
            "input": {"name": "images", "shape": ["batch", 3, data.crop_size, data.crop_size], "dtype": "float32",
                      "preprocessing": f"RGB, resize to {data.image_size}x{data.image_size} (bilinear), centre crop "
                                       f"{data.crop_size}x{data.crop_size}, scale to [0, 1], subtract mean, divide by std",
                      "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "outputs": {"anomaly_maps": ["batch", 1, data.crop_size, data.crop_size], "scores": ["batch"]},
            "calibration": calibration.to_dict() if calibration else None,
            "scan_backend": EXPORT_BACKEND}


def _onnx_bytes(graph: nn.Module, example: Tensor, dynamic: dict[str, Any], facts: dict[str, Any]) -> bytes:
    try:
        import onnx  # noqa: F401  (the exporter needs both; say so before minutes of tracing)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages ({error}); "
                          "pip install onnx onnxscript onnxruntime (or the dev extra)") from None
    program = torch.onnx.export(graph, (example,), dynamo=True, dynamic_shapes=dynamic, input_names=["images"],
                                output_names=["anomaly_maps", "scores"], verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(facts)
    return proto.SerializeToString()


def _pt2_bytes(graph: nn.Module, example: Tensor, dynamic: dict[str, Any], facts: dict[str, Any]) -> bytes:
    program = torch.export.export(graph, (example,), dynamic_shapes=dynamic)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={f"{METADATA_KEY}.json": json.dumps(facts)})
    return buffer.getvalue()


def run_exported(model: bytes | str | Path, fmt: str, images: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """Maps and scores of an exported model (a file or its bytes) on ``images`` (None: onnxruntime
    is not installed)."""
    if fmt == "pt2":
        with torch.no_grad():
            maps, scores = torch.export.load(io.BytesIO(model) if isinstance(model, bytes) else str(model)).module()(
                images)
        return maps.numpy(), scores.numpy()
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model),
                                           providers=["CPUExecutionProvider"])
    maps, scores = session.run(None, {"images": images.numpy()})
    return maps, scores


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path, cls: str | None = None,
                      trust: bool = False) -> ExportReport:
    """Export a MambaAD/MMAD checkpoint (on the CPU), check the file against eager PyTorch on
    an example batch, then write it atomically (a failure leaves nothing at ``out``).

    Args:
        checkpoint: a checkpoint file or run folder (``cls`` for a per-class run folder).
        fmt: ``onnx`` or ``pt2``.
        out: the file to write (atomically).
    Raises:
        ValueError: an unknown format, a method that cannot be exported, or an exported graph
            whose outputs differ from eager PyTorch by more than 1e-4.
        ImportError: ONNX export without the ``onnx``/``onnxscript`` packages.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    out = Path(out)
    ensure_writable_dir(out.parent, "export (--out)")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cls=cls, trust=trust)
    model = exportable_model(predictor)
    crop = predictor.config.data.crop_size
    example = torch.randn(EXAMPLE_BATCH, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    dynamic = {"images": {0: torch.export.Dim("batch", min=1)}}
    facts = deployment_facts(predictor)
    graph = AnomalyMapGraph(model).eval()
    with torch.no_grad():
        expected_maps, expected_scores = (tensor.numpy() for tensor in graph(example))
        model_bytes = (_onnx_bytes if fmt == "onnx" else _pt2_bytes)(graph, example, dynamic, facts)
    exported = run_exported(model_bytes, fmt, example)
    differences = (None, None) if exported is None else \
        (float(np.abs(exported[0] - expected_maps).max()), float(np.abs(exported[1] - expected_scores).max()))
    if exported is not None and max(differences) > PARITY_TOLERANCE:
        raise ValueError(f"the exported {fmt} model differs from eager PyTorch by {max(differences):.3g} "
                         f"(> {PARITY_TOLERANCE}); nothing was written. Please report this with the checkpoint's config")
    return ExportReport(atomic_write_bytes(out, model_bytes), fmt, *differences, facts)
