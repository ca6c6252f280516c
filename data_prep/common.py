"""What every converter shares: the conversion plan, source validation, copying or
hard-linking, mask normalisation, the meta file, counts and the command line.

A converter only lists its source files as :class:`Entry` objects (class, split, defect
type, image, mask) and hands them to :func:`convert_entries`, which

1. applies ``missing_mask`` to anomalous entries without a mask (``error``: a problem,
   ``skip``: dropped, ``keep``: kept without a mask and the meta marked
   ``"missing_mask": "keep"``);
2. maps each entry to its place in the standard layout and rejects clashing targets;
3. validates every image/mask pair (readable, same size, mask values) and fails with one
   ``ValueError`` that lists every bad file;
4. copies or hard-links images and standard masks (0/255, 8-bit PNG) and rewrites other
   masks as 0/255 PNGs (``> 0`` is a defect; several partial masks of one image are
   merged by union);
5. writes ``ROOT/meta_<name>.json`` atomically and returns the counts.

Unlabeled entries (``specie_name=None``, e.g. MVTec AD 2's private test sets) are copied to
``ROOT/<name>/<class>/<set>/`` and listed under the meta's ``"unlabeled"`` key, for
prediction only.

Re-running is idempotent: identical targets are left alone, changed ones are replaced
atomically, and files that the previous conversion listed in its meta but this one no longer
writes are removed (nothing else in the target is touched). A failed conversion leaves no
trace in a target it created (nor empty folders in an existing one). The source is only
ever read; a symbolic link in it that points nowhere is reported, not skipped.
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
from mambaad_lib.data.meta import (MISSING_MASK_KEY, NORMAL_SPECIE, SPLITS, UNLABELED_KEY, dataset_dir, make_item,
                                   meta_path, read_meta, write_meta)
from mambaad_lib.utils.errors import os_error_message

__all__ = ["IMAGE_EXTENSIONS", "MASK_MODES", "MISSING_MASK_MODES", "MISSING_MASK_HINT", "VALIDATION_MODES", "Entry",
           "ConversionError", "list_images", "require_dir", "normal_train_entries", "convert_entries", "format_counts",
           "converter_parser", "add_validation_option", "run_converter"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_MODES = ("binary", "nonzero")
MISSING_MASK_MODES = ("error", "skip", "keep")
VALIDATION_MODES = ("ignore", "merge")
GROUND_TRUTH = "ground_truth"  # the standard layout's mask folder in each class
MAX_LISTED_PROBLEMS = 50
MISSING_MASK_HINT = ("\n(--missing-mask skip drops anomalous images without a mask; --missing-mask keep keeps them "
                     "for image metrics only)")


class ConversionError(ValueError):
    """The source cannot be converted; the message lists every offending file."""


MaskSource = Path | tuple[Path, ...] | None  # one mask, partial masks to merge, or none


@dataclass(frozen=True)
class Entry:
    """One source image and where it goes.

    ``mask`` is the mask file of an anomalous entry (``specie_name != "good"``), or a tuple
    of partial masks to merge by union, or ``None`` when it has none (handled by
    ``missing_mask``); it must be ``None`` for normal ones. ``target_name`` renames the
    image in the standard layout (default: the source file name).

    ``specie_name=None`` marks an unlabeled image (prediction only); its ``split`` is then
    the name of its unlabeled set (e.g. ``test_private``), never ``train`` or ``test``.
    """

    cls_name: str
    split: str
    specie_name: str | None
    image: Path
    mask: MaskSource = None
    target_name: str | None = None

    @property
    def labeled(self) -> bool:
        return self.specie_name is not None

    @property
    def anomalous(self) -> bool:
        return self.labeled and self.specie_name != NORMAL_SPECIE

    @property
    def mask_files(self) -> tuple[Path, ...]:
        """The mask file(s), empty when there is none."""
        if self.mask is None:
            return ()
        return self.mask if isinstance(self.mask, tuple) else (self.mask,)


def list_images(folder: Path, missing_ok: bool = False) -> list[Path]:
    """Image files directly inside ``folder`` (by extension, any case), sorted, hidden files skipped;
    ``[]`` for a folder that does not exist when ``missing_ok``. Symbolic links are listed
    even when they point nowhere, so that validation reports them."""
    if missing_ok and not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() or p.is_symlink()) and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a ``FileNotFoundError`` naming it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist or is not a folder")
    return path


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def normal_train_entries(cls_name: str, train_images: Sequence[Path], validation_images: Sequence[Path],
                         validation: str) -> list[Entry]:
    """Training entries of one class: ``train_images``, plus ``validation_images`` renamed
    ``val_<name>`` when ``validation == "merge"`` (``"ignore"`` leaves them out)."""
    if validation not in VALIDATION_MODES:
        raise ValueError(f"validation must be one of {VALIDATION_MODES}, got {validation!r}")
    entries = [Entry(cls_name, "train", NORMAL_SPECIE, image) for image in train_images]
    if validation == "merge":
        entries += [Entry(cls_name, "train", NORMAL_SPECIE, image, target_name=f"val_{image.name}")
                    for image in validation_images]
    return entries


def train_class_folders(src: str | os.PathLike, validation: str) -> list[Path]:
    """The class folders (those with ``train/`` inside) of a source tree, sorted.

    Raises:
        ValueError: an unknown ``validation`` mode.
        ConversionError: ``src`` is not a folder or has no class folder.
    """
    if validation not in VALIDATION_MODES:
        raise ValueError(f"validation must be one of {VALIDATION_MODES}, got {validation!r}")
    src = require_dir(Path(src), "source dataset folder")
    classes = sorted(p for p in src.iterdir() if p.is_dir() and (p / "train").is_dir())
    if not classes:
        raise ConversionError(f"no class folders (with train/ inside) under {str(src)!r}")
    return classes


def labeled_test_entries(cls_name: str, test: Path, mask_of: Callable[[Path, Path], MaskSource],
                         images_of: Callable[[Path], list[Path]] = list_images, skip: Sequence[str] = ()
                         ) -> list[Entry]:
    """Test entries of one class whose ``test`` folder has one sub-folder per defect type.

    Args:
        cls_name: the class.
        test: the class's test folder (a missing one gives no entries).
        mask_of: ``(defect folder, image) -> mask`` for anomalous images (None when absent).
        images_of: the images of one defect folder.
        skip: sub-folder names that are not defect types (e.g. a ground-truth folder inside).
    """
    entries = []
    for specie_dir in sorted(p for p in test.iterdir() if p.is_dir()) if test.is_dir() else []:
        if specie_dir.name in skip:
            continue
        for image in images_of(specie_dir):
            mask = None if specie_dir.name == NORMAL_SPECIE else mask_of(specie_dir, image)
            entries.append(Entry(cls_name, "test", specie_dir.name, image, mask))
    return entries


def _targets(entry: Entry, folder: Path) -> tuple[Path, Path | None]:
    """Standard-layout image and mask paths for ``entry`` under ``ROOT/<name>``."""
    file_name = entry.target_name or entry.image.name
    if not entry.labeled:
        return folder / entry.cls_name / entry.split / file_name, None
    image = folder / entry.cls_name / entry.split / entry.specie_name / file_name
    if not entry.mask_files:
        return image, None
    return image, folder / entry.cls_name / GROUND_TRUTH / entry.specie_name / f"{Path(file_name).stem}_mask.png"


def _split_problem(entry: Entry) -> str | None:
    if entry.labeled and entry.split not in SPLITS:
        return f"{entry.image}: split {entry.split!r} is not one of {SPLITS}"
    reserved = (*SPLITS, GROUND_TRUTH)
    if not entry.labeled and (entry.split in reserved or not entry.split or Path(entry.split).name != entry.split):
        return f"{entry.image}: an unlabeled set needs a plain folder name other than {reserved}, got {entry.split!r}"
    return None


def _check_entry(entry: Entry, mask_mode: str) -> tuple[list[str], bool, bool]:
    """Validate one pair: (problems, mask needs rewriting as 0/255 PNG, mask is all zero).

    An anomalous entry without a mask is accepted here; :func:`convert_entries` has
    already applied ``missing_mask`` to it.
    """
    split_problem = _split_problem(entry)
    if split_problem:
        return [split_problem], False, False
    try:
        image = load_image(entry.image)
    except (FileNotFoundError, ValueError) as error:
        return [str(error)], False, False
    if not entry.anomalous:
        if entry.mask is not None:
            kind = "an unlabeled" if not entry.labeled else "a normal"
            return [f"{entry.image}: {kind} image must not come with a mask ({entry.mask})"], False, False
        return [], False, False
    if not entry.mask_files:
        return [], False, False
    union = None
    needs_rewrite = len(entry.mask_files) > 1
    for mask_file in entry.mask_files:
        try:
            mask = load_mask(mask_file)
        except (FileNotFoundError, ValueError) as error:
            return [f"{error} (mask of {str(entry.image)!r})"], False, False
        if mask.size != image.size:
            return [f"mask file {str(mask_file)!r} is {mask.size[0]}x{mask.size[1]} but its image "
                    f"{str(entry.image)!r} is {image.size[0]}x{image.size[1]}"], False, False
        values = np.unique(np.asarray(mask))
        if mask_mode == "binary" and (len(values) > 2 or (len(values) == 2 and values[0] != 0)):
            return [f"mask file {str(mask_file)!r} is not binary: values {values[:8].tolist()}"
                    f"{' ...' if len(values) > 8 else ''} (expected 0 and one defect value; "
                    f"--mask-mode nonzero counts every non-zero value as defect)"], False, False
        with Image.open(mask_file) as raw:
            stored_as_standard = raw.format == "PNG" and raw.mode == "L"
        needs_rewrite = needs_rewrite or not stored_as_standard or mask_value_problem(mask, mask_file) is not None
        union = (np.asarray(mask) > 0) if union is None else union | (np.asarray(mask) > 0)
    return [], needs_rewrite, not union.any()


def _replace(target: Path, fill: Callable[[Path], None]) -> None:
    """``fill`` a temporary file beside ``target``, then replace ``target`` with it (never
    writing into it: a previous hard link's source stays intact); OS errors name ``target``."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        fill(temporary)
        os.replace(temporary, target)
    except OSError as error:
        if error.filename is None and error.errno:  # a full disk fails a write, not an open
            raise type(error)(error.errno, error.strerror, str(target)) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


def _place(source: Path, target: Path, link: bool) -> bool:
    """Copy or hard-link ``source`` to ``target`` unless it is already there; True if written."""
    if target.exists():
        same_inode = os.path.samefile(source, target)
        if link and same_inode:
            return False
        if not link and not same_inode and filecmp.cmp(source, target, shallow=False):
            return False

    def hard_link(temporary: Path) -> None:
        try:
            os.link(source, temporary)
        except OSError as error:
            raise ConversionError(f"cannot hard-link {str(source)!r} into {str(target.parent)!r} "
                                  f"({error.strerror or error}); source and root must share a file "
                                  f"system for --link, or convert without --link to copy") from error

    _replace(target, hard_link if link else lambda temporary: shutil.copyfile(source, temporary))
    return True


def _write_binary_mask(sources: Sequence[Path], target: Path) -> bool:
    """Write the union of ``sources`` as an 8-bit 0/255 PNG (``> 0`` is a defect) unless identical;
    True if written."""
    defect = np.logical_or.reduce([np.asarray(load_mask(source)) > 0 for source in sources])
    binary = defect.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(binary, mode="L").save(buffer, format="PNG")
    data = buffer.getvalue()
    if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
        return False
    _replace(target, lambda temporary: temporary.write_bytes(data))
    return True


def _check_paths(src: Path, folder: Path) -> None:
    source, target = src.resolve(), folder.resolve()
    if source == target or source in target.parents or target in source.parents:
        raise ConversionError(f"the source {str(src)!r} and the target {str(folder)!r} overlap; "
                              f"convert into a root outside the source")


UNLABELED_COUNT = "unlabeled"


def _count(entries: Iterable[Entry]) -> dict[str, dict[str, dict[str, int]]]:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for entry in entries:
        per_split = counts.setdefault(entry.cls_name, {split: {} for split in SPLITS}).setdefault(entry.split, {})
        key = entry.specie_name if entry.labeled else UNLABELED_COUNT
        per_split[key] = per_split.get(key, 0) + 1
    return counts


def format_counts(counts: dict[str, dict[str, dict[str, int]]]) -> str:
    """A per-class table: train images, normal and anomalous test images, defect types;
    then the unlabeled (prediction-only) sets, if any."""
    lines = [f"{'class':<22}{'train':>7}{'test ok':>9}{'test bad':>10}  defect types"]
    totals, unlabeled = Counter(), Counter()
    for cls_name, splits in counts.items():
        train = sum(splits["train"].values())
        good = splits["test"].get(NORMAL_SPECIE, 0)
        bad = sum(n for s, n in splits["test"].items() if s != NORMAL_SPECIE)
        defects = ", ".join(f"{s} {n}" for s, n in sorted(splits["test"].items()) if s != NORMAL_SPECIE)
        totals.update(train=train, good=good, bad=bad)
        unlabeled.update({name: sum(n.values()) for name, n in splits.items() if name not in SPLITS})
        lines.append(f"{cls_name:<22}{train:>7}{good:>9}{bad:>10}  {defects}")
    lines.append(f"{'total':<22}{totals['train']:>7}{totals['good']:>9}{totals['bad']:>10}")
    if unlabeled:
        lines.append("unlabeled, for prediction only: " + ", ".join(f"{name} {n}" for name, n in unlabeled.items()))
    return "\n".join(lines)


def _apply_missing_mask(entries: Sequence[Entry], missing_mask: str,
                        log: Callable[[str], None]) -> tuple[list[Entry], list[str], bool]:
    """(entries to convert, problems, whether mask-less anomalies are kept) under ``missing_mask``."""
    without = [entry for entry in entries if entry.anomalous and not entry.mask_files]
    if not without:
        return list(entries), [], False
    per_class = Counter(entry.cls_name for entry in without)
    listed = ", ".join(f"{cls_name} {n}" for cls_name, n in per_class.items())
    if missing_mask == "error":
        return list(entries), [f"anomalous image {str(entry.image)!r} ({entry.specie_name}) has no mask file"
                               for entry in without], False
    if missing_mask == "skip":
        log(f"skipped {len(without)} anomalous image(s) without a mask ({listed})")
        dropped = {id(entry) for entry in without}
        return [entry for entry in entries if id(entry) not in dropped], [], False
    log(f"kept {len(without)} anomalous image(s) without a mask ({listed}); the meta says "
        f"\"{MISSING_MASK_KEY}\": \"keep\" and the pixel metrics of these classes will not be computed")
    return list(entries), [], True


def convert_entries(entries: Sequence[Entry], src: str | os.PathLike, root: str | os.PathLike, name: str,
                    link: bool = False, dry_run: bool = False, mask_mode: str = "binary",
                    missing_mask: str = "error",
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
        missing_mask: what to do with anomalous entries without a mask: ``"error"`` (a
            problem), ``"skip"`` (drop them), ``"keep"`` (keep them with an empty
            ``mask_path`` and write ``"missing_mask": "keep"`` into the meta).
        log: where progress lines and the report go.

    Returns:
        ``{cls_name: {"train": {specie: n}, "test": {specie: n}}}`` (images written, so
        without skipped ones); unlabeled sets add ``{set_name: {"unlabeled": n}}``.

    Raises:
        ConversionError: no entries, clashing targets, overlapping source and target, or
            invalid pairs (every problem is listed, each naming its file).
    """
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    if missing_mask not in MISSING_MASK_MODES:
        raise ValueError(f"missing_mask must be one of {MISSING_MASK_MODES}, got {missing_mask!r}")
    if not any(entry.labeled for entry in entries):
        raise ConversionError(f"no images found under {str(src)!r}; is it the right folder for this converter?")
    root, folder = Path(root), dataset_dir(root, name)
    _check_paths(Path(src), folder)
    entries, problems, keeps_missing = _apply_missing_mask(entries, missing_mask, log)
    missing_hint = bool(problems)

    planned, seen = [], {}
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
            empty_masks.append(" + ".join(map(str, entry.mask_files)))
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise ConversionError(f"{len(problems)} problem(s) in {str(src)!r}; nothing was written:\n  {listed}{more}"
                              + (MISSING_MASK_HINT if missing_hint else ""))
    for path in empty_masks:
        log(f"warning: the mask {path} of an anomalous image is all zero")

    meta: dict = {split: {} for split in SPLITS}
    unlabeled: dict[str, dict[str, list[str]]] = {}
    for entry, image_target, mask_target in planned:
        if entry.labeled:
            mask_rel = _relative(mask_target, root) if mask_target else ""
            meta[entry.split].setdefault(entry.cls_name, []).append(
                make_item(_relative(image_target, root), mask_rel, entry.cls_name, entry.specie_name))
        else:
            unlabeled.setdefault(entry.split, {}).setdefault(entry.cls_name, []).append(_relative(image_target, root))
    targets = {target for _, image_target, mask_target in planned for target in (image_target, mask_target) if target}
    stale = [path for path in _previous_files(root, name, folder, log) if path not in targets]
    counts = _count(entries)
    if dry_run:
        verb = "link" if link else "copy"
        for entry, image_target, mask_target in planned:
            log(f"{verb} {entry.image} -> {image_target}")
            if mask_target:
                log(f"mask {' + '.join(map(str, entry.mask_files))} -> {mask_target}")
        for path in stale:
            log(f"remove {path} (listed by the previous conversion, not by this one)")
        log(f"dry run: would write {len(planned)} images and the meta file {meta_path(root, name)}")
    else:
        written, kept = _write_planned(planned, rewrite_mask, folder, link, name)
        _remove_files(stale, folder)
        for split in SPLITS:
            meta[split] = dict(sorted(meta[split].items()))
        if keeps_missing:
            meta[MISSING_MASK_KEY] = "keep"
        if unlabeled:
            meta[UNLABELED_KEY] = {set_name: dict(sorted(per_class.items()))
                                   for set_name, per_class in sorted(unlabeled.items())}
        path = write_meta(root, name, meta)
        removed = f", {len(stale)} stale file(s) of the previous conversion removed" if stale else ""
        log(f"wrote {written} file(s), {kept} already up to date{removed}; meta: {path}")
    log(format_counts(counts))
    return counts


def _previous_files(root: Path, name: str, folder: Path, log: Callable[[str], None]) -> list[Path]:
    """The files inside ``folder`` that the existing ``meta_<name>.json`` lists (a previous conversion's)."""
    if not meta_path(root, name).is_file():
        return []
    try:
        previous = read_meta(root, name)
    except ValueError as error:
        log(f"warning: the existing meta file cannot be read, so files of the previous conversion are kept ({error})")
        return []
    listed = [value for split in SPLITS for items in previous[split].values() for item in items
              for value in (item["img_path"], item["mask_path"]) if value]
    listed += [path for per_class in previous.get(UNLABELED_KEY, {}).values() for paths in per_class.values()
               for path in paths]
    inside = folder.resolve()
    return sorted({root / value for value in listed if inside in (root / value).resolve().parents})


def _remove_files(paths: Sequence[Path], folder: Path) -> None:
    """Delete ``paths`` and the folders (below ``folder``) that this leaves empty."""
    for path in paths:
        path.unlink(missing_ok=True)
    for parent in sorted({parent for path in paths for parent in path.parents if folder in parent.parents},
                         key=lambda directory: len(directory.parts), reverse=True):
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _make_parent(path: Path, created: list[Path]) -> None:
    """Create ``path``'s missing parent folders, recording each in ``created`` (outermost first)."""
    missing = []
    for parent in path.parents:
        if parent.is_dir():
            break
        missing.append(parent)
    for parent in reversed(missing):
        parent.mkdir(exist_ok=True)
        created.append(parent)


def _write_planned(planned: Sequence[tuple[Entry, Path, Path | None]], rewrite_mask: Sequence[bool], folder: Path,
                   link: bool, name: str) -> tuple[int, int]:
    """Place every planned image and mask; returns (files written, files already up to date).

    On failure (a full disk, a failed hard link, ...) a target folder this call created is
    removed with everything in it, and no folder it created elsewhere is left empty.
    """
    fresh = not folder.exists()
    created: list[Path] = []
    written = kept = 0
    try:
        for (entry, image_target, mask_target), needs_rewrite in zip(
                tqdm(planned, desc=f"writing {name}", unit="image", disable=None), rewrite_mask):
            _make_parent(image_target, created)
            changed = [_place(entry.image, image_target, link)]
            if mask_target:
                _make_parent(mask_target, created)
                changed.append(_write_binary_mask(entry.mask_files, mask_target) if needs_rewrite
                               else _place(entry.mask_files[0], mask_target, link))
            written += sum(changed)
            kept += len(changed) - sum(changed)
    except BaseException:
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        for directory in reversed(created):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        raise
    return written, kept


def converter_parser(prog: str, description: str, default_name: str,
                     default_mask_mode: str = "binary") -> argparse.ArgumentParser:
    """The options every converter takes: --src, --root, --name, --link, --dry-run, --mask-mode,
    --missing-mask."""
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
    parser.add_argument("--missing-mask", choices=MISSING_MASK_MODES, default="error",
                        help="anomalous images without a mask: 'error' (default) stops, 'skip' drops them, "
                             "'keep' keeps them for image metrics only (their classes get no pixel metrics)")
    return parser


def add_validation_option(parser: argparse.ArgumentParser, folder: str = "validation/good") -> None:
    """--validation ignore|merge, for layouts that ship a normal-only validation folder."""
    parser.add_argument("--validation", choices=VALIDATION_MODES, default="ignore",
                        help=f"{folder}: 'ignore' (default; published apart from train, used for validation, "
                             f"not training) or 'merge' into train as val_<name>")


def run_converter(convert: Callable[..., dict], parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                  extra: Callable[[argparse.Namespace], dict] = lambda args: {}) -> int:
    """Parse ``argv``, run ``convert`` and turn expected failures into a message and exit code 1."""
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.root, args.name, link=args.link, dry_run=args.dry_run,
                mask_mode=args.mask_mode, missing_mask=args.missing_mask, **extra(args))
    except (ConversionError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, no permission: one line naming the path
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1
    return 0
