"""The authors' released MambaAD checkpoints: read, map onto our modules, export back.

The released ``.pth`` files (Hugging Face ``Lewandofski/MambaAD``, one per dataset) were
written by ADer's trainer: either a training checkpoint ``{"net": state, "optimizer": ...}``
or the bare state dict. Their keys use the release's module names under three prefixes,
``net_t.`` (encoder), ``mff_oce.`` (bottleneck) and ``net_s.`` (decoder). Two code versions
name the 1x1 wrappers of the 7x7 local branch differently:

=========  ===========================================  =====  ==============================
version    code                                         keys   7x7 branch wrappers
=========  ===========================================  =====  ==============================
``ader``   ADer's ``model/mambaad.py`` = the released   594    ``conv1b3``/``conv1a3``, plus a
           checkpoints                                         never-called ``conv33``
``mambaad``  the MambaAD repository's ``mambaad.py``    588    ``conv1b7``/``conv1a7``
=========  ===========================================  =====  ==============================

The mapping is the table :data:`KEY_RULES` (patterns, not special cases). Besides renaming,
two things differ from our layout:

- the release stacks its 8 scan directions as 4 forward views then the same 4 reversed,
  ours alternate forward/reverse per view: the direction axis of :data:`DIRECTION_STACKED`
  tensors is permuted with :data:`mambaad_lib.scan.RELEASE_DIRECTION_INDEX`;
- the release stores its Hilbert index tensors (``scans.index_flat``/``index_flat_inv``) in
  the state dict; ours are recomputed buffers. The loader checks that they equal ours (which
  verifies our Hilbert order) and skips them; the export writes ours.

Public entry points: :func:`load_release_checkpoint` (file -> model),
:func:`load_release_weights` (file -> an existing model, with a :class:`ReleaseLoadReport`),
:func:`export_release_state_dict` (model -> release key names),
:func:`detect_checkpoint_format`. The CLI's ``--release-checkpoint`` converts a file into one
of our checkpoints with :func:`mambaad_lib.engine.release.release_checkpoint_for_engine`.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mambaad_lib.models.mambaad import MambaAD, build_mambaad
from mambaad_lib.models.ss2d import SS2D
from mambaad_lib.scan import RELEASE_DIRECTION_INDEX, inverse_orders, scan_directions
from mambaad_lib.utils.state import read_torch_file

logger = logging.getLogger(__name__)

RELEASED_VERSION = "ader"
MAMBAAD_CODE_VERSION = "mambaad"
CODE_VERSIONS: dict[str, str] = {
    RELEASED_VERSION: "ADer code = the released checkpoints (conv1b3/conv1a3 wrappers, unused conv33)",
    MAMBAAD_CODE_VERSION: "MambaAD repository code (conv1b7/conv1a7 wrappers, no conv33)",
}
RELEASE_PREFIXES: tuple[str, ...] = ("net_t.", "mff_oce.", "net_s.")
OUR_PREFIXES: tuple[str, ...] = ("encoder.", "bottleneck.", "decoder.")

# The architecture every released file holds (all six configs build the same model).
RELEASE_ARCHITECTURE: dict[str, Any] = {
    "backbone": "resnet34", "depths": (3, 4, 6, 3), "scan": "hilbert", "directions": 8,
    "hss_per_lss": None, "lss_residual": True, "local_kernels": (5, 7), "local_conv": "conv1x1+dw",
}
RELEASE_IMAGE_SIZE = 256

# SS2D parameters whose leading axis (or, for A_logs/Ds, leading K*d_inner axis) is stacked by direction.
DIRECTION_STACKED: tuple[str, ...] = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")

MAPPED, DEAD, INDEX = "mapped", "dead", "index"


@dataclass(frozen=True)
class KeyRule:
    """One row of the mapping table.

    ``release`` and ``ours`` are key templates: ``{i}``, ``{j}``, ``{k}`` stand for module
    indices and ``{rest}`` for the remaining key (``weight``, ``bn1.running_mean``, ...).
    ``role`` is ``mapped`` (copied to ``ours``), ``dead`` (stored by the release, never used
    by its forward pass: dropped and kept aside) or ``index`` (not learned: compared with our
    recomputed scan order, then skipped). ``versions`` lists the code versions that have it.
    """

    release: str
    ours: str | None
    role: str = MAPPED
    versions: tuple[str, ...] = (RELEASED_VERSION, MAMBAAD_CODE_VERSION)


_LSS = "net_s.layers_up.{i}.blocks.{j}"
_HSS = _LSS + ".smm_blocks.{k}"
_OUR_LSS = "decoder.stages.{i}.lss_modules.{j}"
_OUR_HSS = _OUR_LSS + ".hss_blocks.{k}"
_ADER, _MAMBAAD = (RELEASED_VERSION,), (MAMBAAD_CODE_VERSION,)

KEY_RULES: tuple[KeyRule, ...] = (
    # Not learned or never used: listed before the generic rules that would also match them.
    KeyRule(_HSS + ".self_attention.scans.index_flat", None, INDEX),
    KeyRule(_HSS + ".self_attention.scans.index_flat_inv", None, INDEX),
    KeyRule(_LSS + ".conv33.0.weight", None, DEAD, _ADER),
    # Encoder: identical names below the prefix.
    KeyRule("net_t.{rest}", "encoder.{rest}"),
    # MFF_OCE: each release conv/bn pair is one conv-BN-ReLU Sequential here.
    KeyRule("mff_oce.conv1.{rest}", "bottleneck.down1.0.{rest}"),
    KeyRule("mff_oce.bn1.{rest}", "bottleneck.down1.1.{rest}"),
    KeyRule("mff_oce.conv21.{rest}", "bottleneck.lateral2.0.{rest}"),
    KeyRule("mff_oce.bn21.{rest}", "bottleneck.lateral2.1.{rest}"),
    KeyRule("mff_oce.conv2.{rest}", "bottleneck.down2.0.{rest}"),
    KeyRule("mff_oce.bn2.{rest}", "bottleneck.down2.1.{rest}"),
    KeyRule("mff_oce.conv31.{rest}", "bottleneck.lateral3.0.{rest}"),
    KeyRule("mff_oce.bn31.{rest}", "bottleneck.lateral3.1.{rest}"),
    KeyRule("mff_oce.convf.{rest}", "bottleneck.fuse.0.{rest}"),
    KeyRule("mff_oce.bnf.{rest}", "bottleneck.fuse.1.{rest}"),
    KeyRule("mff_oce.bn_layer.{rest}", "bottleneck.oce.{rest}"),
    # Decoder: HSS blocks (same tensor names inside SS2D), local branches, fusion, upsampling.
    KeyRule(_HSS + ".ln_1.{rest}", _OUR_HSS + ".norm.{rest}"),
    KeyRule(_HSS + ".self_attention.{rest}", _OUR_HSS + ".ss2d.{rest}"),
    KeyRule(_LSS + ".conv1b5.0.{rest}", _OUR_LSS + ".local_branches.0.0.0.{rest}"),
    KeyRule(_LSS + ".conv55.0.{rest}", _OUR_LSS + ".local_branches.0.1.0.{rest}"),
    KeyRule(_LSS + ".conv1a5.0.{rest}", _OUR_LSS + ".local_branches.0.2.0.{rest}"),
    KeyRule(_LSS + ".conv1b3.0.{rest}", _OUR_LSS + ".local_branches.1.0.0.{rest}", versions=_ADER),
    KeyRule(_LSS + ".conv1b7.0.{rest}", _OUR_LSS + ".local_branches.1.0.0.{rest}", versions=_MAMBAAD),
    KeyRule(_LSS + ".conv77.0.{rest}", _OUR_LSS + ".local_branches.1.1.0.{rest}"),
    KeyRule(_LSS + ".conv1a3.0.{rest}", _OUR_LSS + ".local_branches.1.2.0.{rest}", versions=_ADER),
    KeyRule(_LSS + ".conv1a7.0.{rest}", _OUR_LSS + ".local_branches.1.2.0.{rest}", versions=_MAMBAAD),
    KeyRule(_LSS + ".finalconv11.{rest}", _OUR_LSS + ".fuse.{rest}"),
    KeyRule("net_s.layers_up.{i}.upsample.{rest}", "decoder.stages.{i}.upsample.{rest}"),
)


@lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z]+\})", template)
    pattern = "".join(
        (r"(?P<rest>.+)" if part == "{rest}" else rf"(?P<{part[1:-1]}>\d+)") if part.startswith("{")
        else re.escape(part) for part in parts)
    return re.compile(pattern)


def _match(template: str, key: str) -> dict[str, str] | None:
    found = _template_regex(template).fullmatch(key)
    return None if found is None else found.groupdict()


def match_release_key(key: str, version: str | None = None) -> tuple[KeyRule, dict[str, str]] | None:
    """The first rule (of ``version``, or of any version) whose release template matches ``key``."""
    for rule in KEY_RULES:
        if version is not None and version not in rule.versions:
            continue
        groups = _match(rule.release, key)
        if groups is not None:
            return rule, groups
    return None


def _permute_directions(tensor: Tensor, order: tuple[int, ...]) -> Tensor:
    """Reorder the direction blocks of a direction-stacked tensor: block j of the result = block order[j]."""
    blocks = tensor.reshape(len(order), tensor.shape[0] // len(order), *tensor.shape[1:])
    return blocks[list(order)].reshape(tensor.shape)


def _is_direction_stacked(our_key: str) -> bool:
    module, _, name = our_key.rpartition(".")
    return module.endswith(".ss2d") and name in DIRECTION_STACKED


RELEASE_TO_OURS: tuple[int, ...] = RELEASE_DIRECTION_INDEX
OURS_TO_RELEASE: tuple[int, ...] = tuple(int(i) for i in torch.argsort(torch.tensor(RELEASE_DIRECTION_INDEX)))


# ---- format detection ------------------------------------------------------------------

COMPANION_CHECKPOINT = "companion-checkpoint"
COMPANION_FORMAT_PREFIX = "mambaad-companion/"  # the 'format' marker of our checkpoint files
COMPANION_STATE_DICT = "companion-state-dict"
RELEASE_TRAINING_CHECKPOINT = "release-training-checkpoint"
RELEASE_STATE_DICT = "release-state-dict"
UNKNOWN_FORMAT = "unknown"

FORMAT_DESCRIPTIONS: dict[str, str] = {
    COMPANION_CHECKPOINT: "a MambaAD Companion checkpoint (written by `mambaad train`)",
    COMPANION_STATE_DICT: "a bare state dict with MambaAD Companion key names",
    RELEASE_TRAINING_CHECKPOINT: "a released/ADer training checkpoint (dict with 'net' and optimizer state)",
    RELEASE_STATE_DICT: "a released/ADer MambaAD state dict (net_t./mff_oce./net_s. keys)",
    UNKNOWN_FORMAT: "not a MambaAD checkpoint of either kind",
}


def _tensor_keys(obj: object) -> list[str] | None:
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        return None
    return [str(key).removeprefix("module.") for key in obj]


def detect_checkpoint_format(obj: object) -> str:
    """Which kind of file ``obj`` (what ``torch.load`` returned) is: one of :data:`FORMAT_DESCRIPTIONS`.

    Release files are recognised by their key prefixes; our checkpoints by their format marker
    (``"mambaad-companion/checkpoint"``) or, bare, by our module prefixes.
    """
    if isinstance(obj, Mapping) and str(obj.get("format", "")).startswith(COMPANION_FORMAT_PREFIX):
        return COMPANION_CHECKPOINT
    container = RELEASE_TRAINING_CHECKPOINT
    if isinstance(obj, Mapping) and isinstance(obj.get("net"), Mapping):
        obj = obj["net"]
    else:
        container = RELEASE_STATE_DICT
    keys = _tensor_keys(obj)
    if keys is None:
        return UNKNOWN_FORMAT
    if any(key.startswith(RELEASE_PREFIXES) for key in keys):
        return container
    if container == RELEASE_STATE_DICT and all(key.startswith(OUR_PREFIXES) for key in keys):
        return COMPANION_STATE_DICT
    return UNKNOWN_FORMAT


def read_release_file(path: str | os.PathLike, trust: bool = False) -> object:
    """What a released ``.pth`` holds, read without running code from it
    (:func:`mambaad_lib.utils.state.read_torch_file`; ``trust`` unpickles fully).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, or a file torch cannot read (not a checkpoint, truncated, corrupt),
            or one that names objects beyond tensors and plain data (without ``trust``).
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"release checkpoint {str(path)!r} is not a file (expected a .pth file)")
    return read_torch_file(path, trust=trust)


def unwrap_release_state_dict(obj: object, source: str) -> tuple[dict[str, Tensor], str]:
    """The release state dict inside ``obj`` (``module.`` prefixes removed) and its container format.

    Raises:
        ValueError: ``obj`` is one of our checkpoints (use ``--checkpoint``) or no MambaAD
            checkpoint at all (the message shows its first keys).
    """
    kind = detect_checkpoint_format(obj)
    if kind in (COMPANION_CHECKPOINT, COMPANION_STATE_DICT):
        raise ValueError(f"{source} is {FORMAT_DESCRIPTIONS[kind]}, not a released MambaAD checkpoint: "
                         "load it with --checkpoint (or mambaad_lib.engine.checkpoint.load_checkpoint)")
    if kind == UNKNOWN_FORMAT:
        if isinstance(obj, Mapping):
            shown = ", ".join(map(str, list(obj)[:5]))
            detail = f"a dict whose first keys are [{shown}]"
        else:
            detail = f"a {type(obj).__name__}"
        raise ValueError(f"{source} is not a released MambaAD checkpoint: it holds {detail}; expected a state "
                         f"dict of tensors with keys starting {', '.join(RELEASE_PREFIXES)} (or a dict holding "
                         "one under 'net')")
    state = obj["net"] if kind == RELEASE_TRAINING_CHECKPOINT else obj
    return {str(key).removeprefix("module."): value for key, value in state.items()}, kind


def detect_code_version(keys: list[str]) -> str:
    """``ader`` (the released files) or ``mambaad`` from the version-specific key names.

    Raises:
        ValueError: the keys mix both versions' names.
    """
    seen: dict[str, str] = {}
    for key in keys:
        matched = match_release_key(key)
        if matched is not None and len(matched[0].versions) == 1:
            seen.setdefault(matched[0].versions[0], key)
    if len(seen) > 1:
        raise ValueError(f"the checkpoint mixes the two code versions' key names ({seen[RELEASED_VERSION]!r} "
                         f"and {seen[MAMBAAD_CODE_VERSION]!r})")
    return next(iter(seen), RELEASED_VERSION)


# ---- loading ---------------------------------------------------------------------------


def _shorten(items: list[str], limit: int = 10) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; ... ({len(items) - limit} more)" if len(items) > limit else "")


@dataclass
class ReleaseLoadReport:
    """What :func:`load_release_weights` found and did.

    Attributes:
        source: the file (or description) read.
        file_format: :data:`RELEASE_TRAINING_CHECKPOINT` or :data:`RELEASE_STATE_DICT`.
        code_version: ``ader`` (released files) or ``mambaad`` (see :data:`CODE_VERSIONS`).
        release_keys: number of keys in the file.
        loaded: our state-dict keys that received a tensor from the file.
        index_verified: Hilbert index tensors found equal to our scan order (and skipped).
        dead_weights: the never-used ``conv33`` tensors, by release key (kept for re-export).
        unknown: release keys no rule of the file's version maps.
        unexpected: release keys mapped to a name our model does not have.
        missing: our keys the file did not provide (they keep the model's values).
        mismatched: tensors whose shape or dtype differs from ours.
        index_mismatches: index tensors that differ from our scan order.
        architecture: model options that differ from the release architecture.
        notes: facts that are not errors (e.g. another image size).
    """

    source: str
    file_format: str
    code_version: str
    release_keys: int
    loaded: list[str] = field(default_factory=list)
    index_verified: int = 0
    dead_weights: dict[str, Tensor] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    index_mismatches: list[str] = field(default_factory=list)
    architecture: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """One line per kind of problem; empty when the file loads strictly."""
        groups = [("model options differ from the release architecture", self.architecture),
                  ("unknown keys (no mapping rule)", self.unknown),
                  ("keys mapped to names this model lacks", self.unexpected),
                  ("model keys the file does not provide", self.missing),
                  ("shape/dtype mismatches", self.mismatched),
                  ("scan index tensors that differ from ours", self.index_mismatches)]
        return [f"{title} ({len(items)}): {_shorten(items)}" for title, items in groups if items]

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary(self) -> str:
        """A few lines for the user: what the file was and what was loaded, skipped and left out."""
        lines = [f"{self.source}: {FORMAT_DESCRIPTIONS[self.file_format]}; {self.release_keys} keys, "
                 f"{CODE_VERSIONS[self.code_version]}",
                 f"  loaded {len(self.loaded)} tensors into MambaAD Companion modules (scan directions reordered)",
                 f"  verified and skipped {self.index_verified} Hilbert index tensors (equal to our scan order)"]
        if self.dead_weights:
            numbers = torch.cat([t.reshape(-1).float() for t in self.dead_weights.values()])
            lines.append(f"  dropped {len(self.dead_weights)} never-used conv33 tensors ({numbers.numel()} numbers, "
                         f"std {numbers.std().item():.3f}; about 0.471 if untouched since initialisation)")
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  NOT LOADED - {problem}" for problem in self.problems()]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors), e.g. for a results file."""
        return {"source": self.source, "file_format": self.file_format, "code_version": self.code_version,
                "release_keys": self.release_keys, "loaded": len(self.loaded),
                "index_verified": self.index_verified, "dead_weights": sorted(self.dead_weights),
                "unknown": self.unknown, "unexpected": self.unexpected, "missing": self.missing,
                "mismatched": self.mismatched, "index_mismatches": self.index_mismatches,
                "architecture": self.architecture, "notes": self.notes}


def release_architecture_mismatches(model: MambaAD) -> list[str]:
    """``option: ours vs release`` for every model option that differs from the released model."""
    config = model.config
    return [f"{name}={getattr(config, name)!r} (release: {value!r}; pass --set model.{name}=...)"
            for name, value in RELEASE_ARCHITECTURE.items() if getattr(config, name) != value]


def _check_index(value: Tensor, key: str, groups: dict[str, str], model: nn.Module) -> str | None:
    """None if ``value`` equals our scan index for its grid, else what is wrong."""
    prefix = _OUR_HSS.format(**groups) + ".ss2d"
    try:
        ss2d = model.get_submodule(prefix)
    except AttributeError:
        return f"{key}: this model has no {prefix}"
    if not isinstance(ss2d, SS2D):
        return f"{key}: {prefix} is not an SS2D"
    length = value.numel()
    side = math.isqrt(length)
    if value.dtype != torch.int64 or tuple(value.shape) != (1, 1, length) or side * side != length:
        return f"{key}: expected an int64 (1, 1, s*s) tensor, got {value.dtype} {tuple(value.shape)}"
    try:
        order = scan_directions(dict(ss2d.scan_spec), side, side, ss2d.directions)[0]
    except ValueError as error:
        return f"{key}: our scan cannot traverse a {side}x{side} grid ({error})"
    expected = inverse_orders(order) if key.endswith("_inv") else order
    if not torch.equal(value.reshape(-1), expected):
        return f"{key}: differs from our direction-0 order of scan {dict(ss2d.scan_spec)} on {side}x{side}"
    return None


def load_release_weights(path: str | os.PathLike | Mapping[str, Any], model: MambaAD,
                         strict: bool = True, trust: bool = False) -> ReleaseLoadReport:
    """Load a released checkpoint (a path, or what ``torch.load`` returned) into ``model``.

    Strict (default): nothing is loaded unless every file key is mapped (or documented as
    unused / recomputed), every model key is provided, shapes and dtypes match, the index
    tensors equal our scan order and the model has the release architecture; otherwise one
    ``ValueError`` lists every problem. Non-strict: the matching tensors are loaded, the rest
    is listed in the report (the model keeps its own values there).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_release_file`, :func:`unwrap_release_state_dict`;
            in strict mode also any problem the report lists.
    """
    source = str(path) if isinstance(path, (str, os.PathLike)) else "release state dict"
    obj = read_release_file(path, trust) if isinstance(path, (str, os.PathLike)) else path
    state, file_format = unwrap_release_state_dict(obj, source)
    version = detect_code_version(list(state))
    report = ReleaseLoadReport(source=source, file_format=file_format, code_version=version,
                               release_keys=len(state))
    report.architecture = release_architecture_mismatches(model)
    if model.config.image_size != RELEASE_IMAGE_SIZE:
        report.notes.append(f"the released weights were trained at {RELEASE_IMAGE_SIZE}x{RELEASE_IMAGE_SIZE}; "
                            f"this model runs at {model.config.image_size}x{model.config.image_size}")

    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    provided: set[str] = set()
    for key, value in state.items():
        matched = match_release_key(key, version)
        if matched is None:
            report.unknown.append(key)
            continue
        rule, groups = matched
        if rule.role == DEAD:
            report.dead_weights[key] = value
        elif rule.role == INDEX:
            problem = _check_index(value, key, groups, model)
            if problem is None:
                report.index_verified += 1
            else:
                report.index_mismatches.append(problem)
        else:
            our_key = rule.ours.format(**groups)
            provided.add(our_key)
            if our_key not in own:
                report.unexpected.append(f"{key} -> {our_key}")
            elif tuple(value.shape) != tuple(own[our_key].shape) or value.dtype != own[our_key].dtype:
                report.mismatched.append(f"{key} -> {our_key}: file {value.dtype} {tuple(value.shape)} vs model "
                                         f"{own[our_key].dtype} {tuple(own[our_key].shape)}")
            else:
                mapped[our_key] = _permute_directions(value, RELEASE_TO_OURS) if _is_direction_stacked(our_key) \
                    else value
    report.missing = [key for key in own if key not in provided]
    report.loaded = list(mapped)

    if strict and not report.ok:
        raise ValueError(f"{source} does not load strictly into MambaAD {model.config.backbone} "
                         f"{list(model.config.depths)} (nothing was loaded):\n  " + "\n  ".join(report.problems())
                         + "\n  Use --non-strict (strict=False) to load what matches and keep the rest.")
    model.load_state_dict(mapped, strict=strict)
    return report


def load_release_checkpoint(path: str | os.PathLike | Mapping[str, Any], model: MambaAD | None = None,
                            strict: bool = True, scan_backend: str = "auto", trust: bool = False) -> MambaAD:
    """A MambaAD with the released weights of ``path``, in eval mode, on CPU.

    Args:
        path: a released ``.pth`` (training checkpoint with ``net`` or bare state dict), or
            the object ``torch.load`` returned.
        model: the model to fill; default: the release architecture (ResNet34, depths
            [3, 4, 6, 3], hilbert x 8) at 256x256 with a random encoder (the file holds it).
        strict: see :func:`load_release_weights`.
        scan_backend: for the default model (``"auto"``: mamba-ssm on GPU, our kernel on CPU).
        trust: unpickle the file fully (it may run code); only for files you trust.
    Returns:
        ``model``; the report is logged (INFO, or WARNING when something was not loaded).
    """
    if model is None:
        model = build_mambaad(**RELEASE_ARCHITECTURE, image_size=RELEASE_IMAGE_SIZE, scan_backend=scan_backend)
    report = load_release_weights(path, model, strict=strict, trust=trust)
    logger.log(logging.INFO if report.ok else logging.WARNING, "%s", report.summary())
    return model.eval()


# ---- export ----------------------------------------------------------------------------


def _our_key_to_release(key: str, version: str) -> str | None:
    for rule in KEY_RULES:
        if rule.role == MAPPED and version in rule.versions:
            groups = _match(rule.ours, key)
            if groups is not None:
                return rule.release.format(**groups)
    return None


def export_release_state_dict(model: MambaAD, code_version: str = RELEASED_VERSION,
                              dead_weights: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``model``'s weights under the release's key names and layouts (the inverse of loading).

    Index tensors are our scan orders of each SS2D's grid (the release code needs 256x256,
    i.e. grids 8..64). For ``code_version="ader"`` the never-used ``conv33`` weights come from
    ``dead_weights`` (e.g. ``report.dead_weights``) or are zeros: no code reads them.

    Raises:
        ValueError: unknown ``code_version``, or a model key no rule maps (another architecture).
    """
    if code_version not in CODE_VERSIONS:
        raise ValueError(f"code_version must be one of {list(CODE_VERSIONS)}, got {code_version!r}")
    exported: dict[str, Tensor] = {}
    unmapped = []
    for key, value in model.state_dict().items():
        release_key = _our_key_to_release(key, code_version)
        if release_key is None:
            unmapped.append(key)
            continue
        exported[release_key] = _permute_directions(value, OURS_TO_RELEASE) if _is_direction_stacked(key) \
            else value.clone()
    if unmapped:
        raise ValueError(f"{len(unmapped)} model keys have no release name (not the release architecture?): "
                         f"{_shorten(unmapped)}")
    dead_weights = dict(dead_weights or {})
    for prefix, module in model.named_modules():
        groups = _match(_OUR_HSS + ".ss2d", prefix)
        if groups is not None:
            order = module.scan_orders[0].cpu()
            base = _HSS.format(**groups) + ".self_attention.scans"
            exported[base + ".index_flat"] = order.reshape(1, 1, -1).clone()
            exported[base + ".index_flat_inv"] = inverse_orders(order).reshape(1, 1, -1)
        groups = _match(_OUR_LSS, prefix)
        if groups is not None and code_version == RELEASED_VERSION:
            key = _LSS.format(**groups) + ".conv33.0.weight"
            dim = module.fuse.out_channels
            exported[key] = dead_weights[key].clone() if key in dead_weights else torch.zeros(dim, 1, 3, 3)
    return exported
