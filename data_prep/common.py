"""What every converter shares: the conversion plan, source validation, copying or
hard-linking, mask normalisation, the meta file, counts and the command line.

A converter only lists its source files as :class:`Entry` objects (class, split, defect
type, image, mask) and hands them to :func:`convert_entries`, which

1. maps each entry to its place in the standard layout and rejects clashing targets;
2. validates every image/mask pair (readable, same size, mask values) and fails with one
   ``ValueError`` that lists every bad file;
3. copies or hard-links images and standard masks (0/255, 8-bit PNG) and rewrites other
   masks as 0/255 PNGs (``> 0`` is a defect);
4. writes ``ROOT/meta_<name>.json`` atomically and returns the counts.

Re-running is idempotent: identical targets are left alone, changed ones are replaced
atomically. The source is only ever read.
"""
from __future__ import annotations

import argparse
import filecmp
import io
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from mambaad_lib.data.io import load_image, load_mask, mask_value_problem
from mambaad_lib.data.meta import NORMAL_SPECIE, SPLITS, dataset_dir, make_item, write_meta

__all__ = ["IMAGE_EXTENSIONS", "MASK_MODES", "Entry", "ConversionError", "list_images", "require_dir",
           "convert_entries", "format_counts", "converter_parser", "run_converter"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_MODES = ("binary", "nonzero")
MAX_LISTED_PROBLEMS = 50


class ConversionError(ValueError):
    """The source cannot be converted; the message lists every offending file."""


@dataclass(frozen=True)
class Entry:
    """One source image and where it goes.

    ``mask`` is required for anomalous entries (``specie_name != "good"``) and must be
    ``None`` for normal ones. ``target_name`` renames the image in the standard layout
    (default: the source file name).
    """

    cls_name: str
    split: str
    specie_name: str
    image: Path
    mask: Path | None = None
    target_name: str | None = None

    @property
    def anomalous(self) -> bool:
        return self.specie_name != NORMAL_SPECIE


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by extension, any case), sorted, hidden files skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a ``FileNotFoundError`` naming it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist or is not a folder")
    return path


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _targets(entry: Entry, folder: Path) -> tuple[Path, Path | None]:
    """Standard-layout image and mask paths for ``entry`` under ``ROOT/<name>``."""
    file_name = entry.target_name or entry.image.name
    image = folder / entry.cls_name / entry.split / entry.specie_name / file_name
    if not entry.anomalous:
        return image, None
    return image, folder / entry.cls_name / "ground_truth" / entry.specie_name / f"{Path(file_name).stem}_mask.png"


def _check_entry(entry: Entry, mask_mode: str) -> tuple[list[str], bool, bool]:
    """Validate one pair: (problems, mask needs rewriting as 0/255 PNG, mask is all zero)."""
    if entry.split not in SPLITS:
        return [f"{entry.image}: split {entry.split!r} is not one of {SPLITS}"], False, False
    try:
        image = load_image(entry.image)
    except (FileNotFoundError, ValueError) as error:
        return [str(error)], False, False
    if not entry.anomalous:
        if entry.mask is not None:
            return [f"{entry.image}: a normal image must not come with a mask ({entry.mask})"], False, False
        return [], False, False
    if entry.mask is None:
        return [f"anomalous image {str(entry.image)!r} ({entry.specie_name}) has no mask file"], False, False
    try:
        mask = load_mask(entry.mask)
    except (FileNotFoundError, ValueError) as error:
        return [f"{error} (mask of {str(entry.image)!r})"], False, False
    if mask.size != image.size:
        return [f"mask file {str(entry.mask)!r} is {mask.size[0]}x{mask.size[1]} but its image "
                f"{str(entry.image)!r} is {image.size[0]}x{image.size[1]}"], False, False
    values = np.unique(np.asarray(mask))
    if mask_mode == "binary" and (len(values) > 2 or (len(values) == 2 and values[0] != 0)):
        return [f"mask file {str(entry.mask)!r} is not binary: values {values[:8].tolist()}"
                f"{' ...' if len(values) > 8 else ''} (expected 0 and one defect value)"], False, False
    with Image.open(entry.mask) as raw:
        stored_as_standard = raw.format == "PNG" and raw.mode == "L"
    needs_rewrite = not stored_as_standard or mask_value_problem(mask, entry.mask) is not None
    return [], needs_rewrite, bool(values.max() == 0)


def _place(source: Path, target: Path, link: bool) -> bool:
    """Copy or hard-link ``source`` to ``target`` unless it is already there; True if written."""
    if target.exists():
        same_inode = os.path.samefile(source, target)
        if link and same_inode:
            return False
        if not link and not same_inode and filecmp.cmp(source, target, shallow=False):
            return False
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        if link:
            try:
                os.link(source, temporary)
            except OSError as error:
                raise ConversionError(f"cannot hard-link {str(source)!r} into {str(target.parent)!r} "
                                      f"({error.strerror or error}); source and root must share a file "
                                      f"system for --link, or convert without --link to copy") from error
        else:
            shutil.copyfile(source, temporary)
        # Replacing (never writing into) the target keeps a previous hard link's source intact.
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return True


def _write_binary_mask(source: Path, target: Path) -> bool:
    """Write ``source`` as an 8-bit 0/255 PNG (``> 0`` is a defect) unless identical; True if written."""
    binary = (np.asarray(load_mask(source)) > 0).astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(binary, mode="L").save(buffer, format="PNG")
    data = buffer.getvalue()
    if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
        return False
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return True


def _check_paths(src: Path, folder: Path) -> None:
    source, target = src.resolve(), folder.resolve()
    if source == target or source in target.parents or target in source.parents:
        raise ConversionError(f"the source {str(src)!r} and the target {str(folder)!r} overlap; "
                              f"convert into a root outside the source")


def _count(entries: Iterable[Entry]) -> dict[str, dict[str, dict[str, int]]]:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for entry in entries:
        per_split = counts.setdefault(entry.cls_name, {split: {} for split in SPLITS})[entry.split]
        per_split[entry.specie_name] = per_split.get(entry.specie_name, 0) + 1
    return counts


def format_counts(counts: dict[str, dict[str, dict[str, int]]]) -> str:
    """A per-class table: train images, normal and anomalous test images, defect types."""
    lines = [f"{'class':<22}{'train':>7}{'test ok':>9}{'test bad':>10}  defect types"]
    totals = Counter()
    for cls_name, splits in counts.items():
        train = sum(splits["train"].values())
        good = splits["test"].get(NORMAL_SPECIE, 0)
        bad = sum(n for s, n in splits["test"].items() if s != NORMAL_SPECIE)
        defects = ", ".join(f"{s} {n}" for s, n in sorted(splits["test"].items()) if s != NORMAL_SPECIE)
        totals.update(train=train, good=good, bad=bad)
        lines.append(f"{cls_name:<22}{train:>7}{good:>9}{bad:>10}  {defects}")
    lines.append(f"{'total':<22}{totals['train']:>7}{totals['good']:>9}{totals['bad']:>10}")
    return "\n".join(lines)


def convert_entries(entries: Sequence[Entry], src: str | os.PathLike, root: str | os.PathLike, name: str,
                    link: bool = False, dry_run: bool = False, mask_mode: str = "binary",
                    log: Callable[[str], None] = print) -> dict[str, dict[str, dict[str, int]]]:
    """Validate ``entries``, place them in ``ROOT/<name>`` and write ``ROOT/meta_<name>.json``.

    Args:
        entries: the source files, as listed by a converter.
        src: the source dataset folder (only checked not to overlap the target).
        root, name: the standard-layout root and dataset name.
        link: hard-link images and standard masks instead of copying them.
        dry_run: validate and list the planned actions, write nothing.
        mask_mode: ``"binary"`` rejects masks with more than one non-zero value;
            ``"nonzero"`` accepts any values (VisA's class-index masks).
        log: where progress lines and the report go.

    Returns:
        ``{cls_name: {"train": {specie: n}, "test": {specie: n}}}``.

    Raises:
        ConversionError: no entries, clashing targets, overlapping source and target, or
            invalid pairs (every problem is listed, each naming its file).
    """
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    if not entries:
        raise ConversionError(f"no images found under {str(src)!r}; is it the right folder for this converter?")
    root, folder = Path(root), dataset_dir(root, name)
    _check_paths(Path(src), folder)

    planned, seen, problems = [], {}, []
    for entry in entries:
        image_target, mask_target = _targets(entry, folder)
        if image_target in seen:
            problems.append(f"{str(entry.image)!r} and {str(seen[image_target])!r} would both become "
                            f"{_relative(image_target, root)!r}")
        seen[image_target] = entry.image
        planned.append((entry, image_target, mask_target))
    empty_masks, rewrite_mask = [], []
    for entry, _, _ in tqdm(planned, desc=f"validating {name}", unit="image", disable=None):
        entry_problems, needs_rewrite, empty = _check_entry(entry, mask_mode)
        problems.extend(entry_problems)
        rewrite_mask.append(needs_rewrite)
        if empty:
            empty_masks.append(str(entry.mask))
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise ConversionError(f"{len(problems)} problem(s) in {str(src)!r}; nothing was written:\n  {listed}{more}")
    for path in empty_masks:
        log(f"warning: the mask {path!r} of an anomalous image is all zero")

    meta = {split: {} for split in SPLITS}
    written = kept = 0
    verb = "link" if link else "copy"
    for (entry, image_target, mask_target), needs_rewrite in zip(
            tqdm(planned, desc=f"writing {name}", unit="image", disable=True if dry_run else None), rewrite_mask):
        mask_rel = _relative(mask_target, root) if mask_target else ""
        meta[entry.split].setdefault(entry.cls_name, []).append(
            make_item(_relative(image_target, root), mask_rel, entry.cls_name, entry.specie_name))
        if dry_run:
            log(f"{verb} {entry.image} -> {image_target}")
            if mask_target:
                log(f"mask {entry.mask} -> {mask_target}")
            continue
        image_target.parent.mkdir(parents=True, exist_ok=True)
        changed = [_place(entry.image, image_target, link)]
        if mask_target:
            mask_target.parent.mkdir(parents=True, exist_ok=True)
            changed.append(_write_binary_mask(entry.mask, mask_target) if needs_rewrite
                           else _place(entry.mask, mask_target, link))
        written += sum(changed)
        kept += len(changed) - sum(changed)
    counts = _count(entries)
    if dry_run:
        log(f"dry run: would write {len(planned)} images and the meta file {root / f'meta_{name}.json'}")
    else:
        for split in SPLITS:
            meta[split] = dict(sorted(meta[split].items()))
        path = write_meta(root, name, meta)
        log(f"wrote {written} file(s), {kept} already up to date; meta: {path}")
    log(format_counts(counts))
    return counts


def converter_parser(prog: str, description: str, default_name: str,
                     default_mask_mode: str = "binary") -> argparse.ArgumentParser:
    """The options every converter takes: --src, --root, --name, --link, --dry-run, --mask-mode."""
    parser = argparse.ArgumentParser(prog=f"python -m data_prep.{prog}", description=description)
    parser.add_argument("--src", required=True, type=Path, help="the dataset as published (read only)")
    parser.add_argument("--root", required=True, type=Path, help="the standard-layout dataset root to write into")
    parser.add_argument("--name", default=default_name, help=f"dataset name under the root (default: {default_name})")
    parser.add_argument("--link", action="store_true",
                        help="hard-link images instead of copying them (same file system only)")
    parser.add_argument("--dry-run", action="store_true", help="validate and list what would be done, write nothing")
    parser.add_argument("--mask-mode", choices=MASK_MODES, default=default_mask_mode,
                        help="'binary': masks must hold 0 and at most one other value; 'nonzero': any "
                             f"non-zero pixel is a defect (default: {default_mask_mode})")
    return parser


def run_converter(convert: Callable[..., dict], parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                  extra: Callable[[argparse.Namespace], dict] = lambda args: {}) -> int:
    """Parse ``argv``, run ``convert`` and turn expected failures into a message and exit code 1."""
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.root, args.name, link=args.link, dry_run=args.dry_run,
                mask_mode=args.mask_mode, **extra(args))
    except (ConversionError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
