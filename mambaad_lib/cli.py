"""The ``mambaad`` command: train, evaluate, predict, calibrate, export, make data, check data, show the setup.

Examples::

    mambaad synth --profile smoke                 # a tiny synthetic dataset under data/
    mambaad train --profile smoke                 # train + evaluate, writes results/smoke/smoke/<run>.json
    mambaad evaluate --profile smoke              # re-evaluate the newest finished smoke run
    mambaad predict my_images/ --checkpoint runs/smoke/<run>/final.pt --out predictions/
    mambaad calibrate --checkpoint runs/smoke/<run>/final.pt --images normal_images/
    mambaad export --checkpoint runs/smoke/<run>/final.pt --format onnx --out model.onnx
    mambaad train --profile paper --dataset visa --experiment paper_visa --device cuda
    mambaad train --profile demo --train.epochs 5 --model.depths 2,2,2,2

Every config key can be overridden with ``--section.key VALUE`` (see ``mambaad train --help``).
"""
from __future__ import annotations

import argparse
import logging
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

DATASETS = ("mvtec", "visa", "mvtec3d", "realiad", "btad", "mvtec_loco", "mvtec_ad2", "mpdd", "folder")

# Short options -> config keys.
ALIASES: dict[str, tuple[str, str]] = {
    "model": ("method", "detector to use"),
    "device": ("device", "cpu, cuda or auto (cuda when available)"),
    "seed": ("seed", "seed of torch, numpy, python and data order"),
    "experiment": ("experiment", "experiment name (results/<experiment>/..., runs/<experiment>/...)"),
    "epochs": ("train.epochs", "training epochs"),
    "batch_size": ("train.batch_size", "training batch size (the learning rate scales with it)"),
    "lr": ("train.lr", "learning rate at batch 16"),
    "precision": ("train.precision", "training precision: fp32, bf16 or fp16 (mixed precision; the scan stays fp32)"),
    "encoder_weights": ("model.encoder_weights",
                        "imagenet (the ImageNet file the release loads through timm; needs network or "
                        "the torch hub cache), torchvision (torchvision's IMAGENET1K_V1, this library's "
                        "'imagenet' before), none (random encoder, offline check only) or PATH to a local "
                        "ResNet weights file"),
    "scan_backend": ("model.scan_backend", "selective-scan backend: auto, cpu, mamba_ssm, chunked, reference"),
    "base": ("model.base", "AHL's base model: dra or devnet"),
    "texture_dir": ("model.texture_dir", "texture folder for GLASS's local anomaly synthesis (e.g. DTD); "
                    "default: textures bundled with scikit-image"),
    "image_size": ("data.image_size", "image side after resizing"),
    "data_root": ("data.root", "folder holding meta_<dataset>.json"),
    "dataset": ("data.name", "dataset name (meta_<name>.json)"),
    "classes": ("data.classes", "comma-separated classes (default: all)"),
    "calibration_dir": ("train.calibration_dir", "train: a folder of normal images (DIR/<class>/ for per-class "
                        "methods) to calibrate decision thresholds on after training"),
    "results_dir": ("paths.results_dir", "results folder (default results/ in the current folder)"),
    "runs_dir": ("paths.runs_dir", "checkpoint/scratch folder (default runs/ in the current folder)"),
}


class CLIError(Exception):
    """A usage error reported as ``mambaad: error: ...`` with exit code 2."""


def _config_epilog() -> str:
    from mambaad_lib.engine.config import available_profiles, config_keys, load_config

    lines = ["config keys (override any with --section.key VALUE; lists as 1,2,3; defaults shown are",
             "those of a config without profile):"]
    for key, type_name, value in config_keys(load_config(None)):
        lines.append(f"  --{key:<32} {type_name:<22} {value!r}")
    lines.append("profiles: smoke, demo or paper (the chosen method's own settings of that size), a packaged "
                 f"profile ({', '.join(available_profiles())}) or any YAML path")
    return "\n".join(lines)


def _add_config_options(parser: argparse.ArgumentParser, profile_required: bool) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument("--profile", "--config", dest="profile", metavar="NAME|YAML", required=profile_required,
                       help="smoke, demo or paper (the size; with --model, that method's own settings), "
                            "a packaged profile name, or a YAML file")
    for name, (key, text) in ALIASES.items():
        if name == "model":
            from mambaad_lib.methods import METHODS

            group.add_argument("--model", dest="alias_model", choices=sorted(METHODS), help=text)
        else:
            same = key == name
            group.add_argument("--" + name.replace("_", "-"), dest=f"alias_{name}", metavar="VALUE",
                               help=text if same else f"{text} (= --{key})")
    group.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set train.epochs=3 (repeatable)")


def _add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="DANGEROUS: unpickle checkpoint files fully, which runs any code they contain; only for "
                             "files you made yourself. By default a file is read as tensors and plain data only, and "
                             "one that names anything else is refused")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only warnings and errors")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch and the library's kernels (default: $OMP_NUM_THREADS, else "
                             "the CPUs this process may use); idle threads spin briefly, then sleep ($GOMP_SPINCOUNT=1000) "
                             "unless $OMP_WAIT_POLICY, $GOMP_SPINCOUNT or $KMP_BLOCKTIME is set")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mambaad", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="MambaAD Companion: train and evaluate MambaAD (NeurIPS 2024) anomaly detectors, "
                    "on CPU or GPU, and write results the book reads.",
        epilog="Start here:  mambaad synth --profile smoke && mambaad train --profile smoke\n"
               "Details of a command:  mambaad COMMAND --help")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser(
        "train", help="train a detector, evaluate it, write results", formatter_class=raw, allow_abbrev=False,
        description="Train on the normal images of all classes (one unified model), evaluate the test split "
                    "with both metric protocols, write results/<experiment>/<profile>/<run_id>.json and "
                    "checkpoints in runs/<experiment>/<run_id>/. Ctrl-C saves a checkpoint; --resume continues.\n"
                    "Several GPUs or machines: the same command under torchrun, e.g.\n"
                    "  torchrun --nproc_per_node 4 -m mambaad_lib.cli train --profile paper --device cuda\n"
                    "(train.batch_size stays the global batch; rank 0 writes; see book/training_bigger.md).",
        epilog=_config_epilog())
    _add_config_options(train, profile_required=False)
    train.add_argument("--run-id", help="name of the run (default: <method>-seed<seed>-<time>-<random>)")
    train.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                       help="continue an interrupted run: a run id, run folder or last.pt (default: the newest "
                            "unfinished run of this experiment with the same config)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace a finished run of the same --run-id (its checkpoints and results file)")
    train.add_argument("--allow-empty-classes", action="store_true",
                       help="train although some selected classes have no normal training images "
                            "(= --set data.allow_empty_classes=true); by default that stops the run before training")
    _add_common(train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a checkpoint on a test split", formatter_class=raw, allow_abbrev=False,
        description="Evaluate a checkpoint (default: the newest finished run of the profile's experiment) "
                    "and write a results file. Without --profile the checkpoint's own config is used; "
                    "options still override it (e.g. --data-root).",
        epilog=_config_epilog())
    evaluate.add_argument("--checkpoint", metavar="FILE|RUN",
                          help="final.pt / last.pt (or a bare state dict), or the run folder of a per-class method")
    evaluate.add_argument("--release-checkpoint", metavar="PTH",
                          help="the authors' released MambaAD weights (a .pth from huggingface.co/Lewandofski/MambaAD); "
                               "see book/release_checkpoints.md")
    evaluate.add_argument("--non-strict", action="store_true",
                          help="with --release-checkpoint: load what matches and list the rest")
    _add_config_options(evaluate, profile_required=False)
    _add_trust(evaluate)
    evaluate.add_argument("--run-id", help="name of the results file (default: eval-<run>-<time>)")
    _add_common(evaluate)

    predict = commands.add_parser(
        "predict", help="anomaly maps, scores and decisions for your own images", formatter_class=raw,
        allow_abbrev=False,
        description="Write <name>_map.npy (at the image's resolution), <name>_overlay.png, scores.csv and "
                    "scores.jsonl (score, normalised score, label) for image files or folders. Images are resized "
                    "like the training images; RGB or greyscale only. Labels and overlay colours come from the "
                    "checkpoint's calibration (see mambaad calibrate). Unreadable files are listed at the end "
                    "(exit code 2); the others' results are kept.")
    predict.add_argument("inputs", nargs="+", metavar="IMG|DIR", help="image files and/or folders of images")
    predict.add_argument("--checkpoint", metavar="FILE|RUN",
                         help="a checkpoint written by train, or the run folder of a per-class method with --class")
    predict.add_argument("--class", dest="cls", metavar="CLASS", help="the class model of a per-class run folder")
    predict.add_argument("--release-checkpoint", metavar="PTH",
                          help="the authors' released MambaAD weights (a .pth from huggingface.co/Lewandofski/MambaAD); "
                               "see book/release_checkpoints.md")
    predict.add_argument("--non-strict", action="store_true",
                          help="with --release-checkpoint: load what matches and list the rest")
    predict.add_argument("--out", default="predictions", metavar="DIR",
                         help="output folder, must be new or empty (default: predictions)")
    predict.add_argument("--no-resize", dest="resize", action="store_false",
                         help="require images of exactly the model's input size instead of resizing")
    _add_config_options(predict, profile_required=False)
    _add_trust(predict)
    _add_common(predict)

    calibrate = commands.add_parser(
        "calibrate", help="store decision thresholds in a checkpoint, from normal images", allow_abbrev=False,
        description="Score normal images with a checkpoint and store its calibration in it (atomically): the image "
                    "and pixel thresholds at --quantile of the normal scores and the normalised score's statistics "
                    "(book/deployment.md). Per-class run folders calibrate each class model on DIR/<class>/.")
    calibrate.add_argument("--checkpoint", required=True, metavar="FILE|RUN",
                           help="a checkpoint written by train, or the run folder of a per-class method")
    calibrate.add_argument("--images", required=True, metavar="DIR",
                           help="normal images the model did not train on (searched recursively)")
    calibrate.add_argument("--quantile", type=float, default=0.99,
                           help="share of normal images kept below the thresholds (default 0.99)")
    calibrate.add_argument("--class", dest="cls", metavar="CLASS", help="calibrate only this class model")
    calibrate.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    _add_trust(calibrate)
    _add_common(calibrate)

    export = commands.add_parser(
        "export", help="export a MambaAD or MMAD checkpoint to ONNX or torch.export", allow_abbrev=False,
        description="Write the whole inference (maps, blur, scores) as an ONNX model or a torch.export program "
                    "(dynamic batch size, the checkpoint's image size), check it against PyTorch, and describe its "
                    "input and calibration in the file's metadata (book/deployment.md).")
    export.add_argument("--checkpoint", required=True, metavar="FILE|RUN", help="a MambaAD or MMAD checkpoint")
    export.add_argument("--format", required=True, choices=("onnx", "pt2"), dest="export_format",
                        help="onnx (run with onnxruntime) or pt2 (torch.export.load)")
    export.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    export.add_argument("--class", dest="cls", metavar="CLASS", help="the class model of a per-class run folder")
    _add_trust(export)
    _add_common(export)

    synth = commands.add_parser(
        "synth", help="generate the synthetic benchmark", formatter_class=raw, allow_abbrev=False,
        description="Write the synthetic defect dataset (data.root/data.name, with the profile's "
                    "'synthetic' section) so that everything runs without downloads.")
    _add_config_options(synth, profile_required=False)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    _add_common(synth)

    prep = commands.add_parser(
        "prep", help="convert a downloaded dataset to the standard layout", allow_abbrev=False, formatter_class=raw,
        description="Convert MVTec-AD, VisA, MVTec-3D (RGB), Real-IAD, BTAD, MVTec LOCO AD, MVTec AD 2, MPDD or "
                    "any MVTec-style folder into ROOT/meta_<name>.json + images, as the engine reads them.",
        epilog="Other options go to the converter (python -m data_prep.<converter> --help):\n"
               "  --mask-mode binary|nonzero (all)   --validation ignore|merge (mvtec3d, mvtec_loco, mvtec_ad2)\n"
               "  --private include|ignore (mvtec_ad2)   --normal-name, --ground-truth-name, --mask-suffix (folder)\n"
               "  --json-dir, --image-root (realiad)   --split-csv (visa)")
    prep.add_argument("dataset", choices=DATASETS, help="which converter")
    prep.add_argument("source", help="the dataset as downloaded and extracted")
    prep.add_argument("--root", default="data", help="output root (default: data)")
    prep.add_argument("--name", help="dataset name (default: the converter's)")
    prep.add_argument("--link", action="store_true", help="hard-link images instead of copying (same file system)")
    prep.add_argument("--dry-run", action="store_true", help="report what would be written, write nothing")
    prep.add_argument("--missing-mask", choices=("error", "skip", "keep"), default="error",
                      help="anomalous images without a mask: error (default), skip (drop them) or keep (image "
                           "metrics only; their classes get no pixel metrics)")
    _add_common(prep)

    validate = commands.add_parser(
        "validate-data", help="check a dataset's meta file and images", allow_abbrev=False,
        description="Report every problem of ROOT/meta_NAME.json and the files it names; exit 1 if any.")
    validate.add_argument("--root", default="data", help="dataset root (default: data)")
    validate.add_argument("--name", default="synthetic", help="dataset name (default: synthetic)")
    _add_common(validate)

    info = commands.add_parser("info", help="versions, device and selective-scan backends", allow_abbrev=False,
                               description="Print versions, devices, every scan backend's status and "
                                           "the profiles and methods available. Makes no network calls.")
    _add_common(info)

    from mambaad_lib.reproduce import add_arguments as add_reproduce_arguments

    reproduce = commands.add_parser(
        "reproduce", help="execute the book's notebooks with papermill, then build the book", allow_abbrev=False,
        description="Run every notebooks/NN_*.py (or --only some) with papermill and the chosen profile, write "
                    "the executed notebooks to book/experiments/, then build the book into _build/html/.")
    add_reproduce_arguments(reproduce)
    _add_common(reproduce)
    return parser


# ---- config from arguments -------------------------------------------------------------


def _overrides(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    """Aliases, --set and --section.key arguments -> {dotted key: value}."""
    from mambaad_lib.engine.config import parse_override

    overrides: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def put(key: str, value: Any, given_as: str) -> None:
        if key in overrides and overrides[key] != value:
            raise CLIError(f"{origin[key]} and {given_as} set {key} to different values "
                           f"({overrides[key]!r} and {value!r}); give it once")
        overrides[key], origin[key] = value, given_as

    for name, (key, _) in ALIASES.items():
        value = getattr(args, f"alias_{name}", None)
        if value is not None:
            flag = "--" + name.replace("_", "-")
            put(key, value if name == "model" else parse_override(f"{key}={value}")[1], f"{flag} {value}")
    for text in args.sets:
        key, value = parse_override(text)
        put(key, value, f"--set {text}")
    tokens = list(extra)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            raise CLIError(f"unrecognized argument {token!r} (config keys look like --train.epochs 3)")
        if "=" in token:
            key, value = parse_override(token[2:])
        else:
            if not tokens or tokens[0].startswith("--"):
                raise CLIError(f"{token} needs a value")
            key, value = parse_override(f"{token[2:]}={tokens.pop(0)}")
        put(key, value, f"--{key}")
    return overrides


def _config(args: argparse.Namespace, extra: Sequence[str], base: dict[str, Any] | None = None):
    """The run config of a command: :func:`mambaad_lib.engine.config.load_config`'s one rule."""
    from mambaad_lib.engine.config import load_config

    if args.profile is None and base is None:
        raise CLIError("choose a profile: --profile smoke|demo|paper or --profile path/to/config.yaml")
    return load_config(args.profile, _overrides(args, extra), base=base)


# ---- commands --------------------------------------------------------------------------


def _cmd_train(args, extra) -> int:
    from mambaad_lib.engine import runner

    base = None
    if args.resume is not None and args.profile is None:
        base = _stored_config_for_resume(args.resume)
    if args.allow_empty_classes:
        args.sets.append("data.allow_empty_classes=true")
    config = _config(args, extra, base=base)
    outcome = runner.train(config, run_id=args.run_id, resume=args.resume, progress=not args.quiet,
                           overwrite=args.overwrite)
    _print_summary(outcome.record, outcome.results_file)
    return 0


def _stored_config_for_resume(resume: str) -> dict[str, Any]:
    """``--resume`` without ``--profile``: the interrupted run's stored config."""
    from mambaad_lib.engine.runner import stored_config

    candidate = Path(resume)
    folder = candidate.parent if candidate.is_file() else candidate
    for path in (folder, folder.parent):
        if (path / "config.yaml").is_file():
            return stored_config(path)
    raise CLIError("--resume with a run id or 'latest' needs --profile (to know the experiment); "
                   "or pass the run folder or a checkpoint inside it")


def _release_checkpoint(args, extra):
    """Convert the authors' weights into one of our checkpoints; (config, checkpoint path)."""
    from mambaad_lib.engine.release import release_checkpoint_for_engine

    if args.checkpoint is not None:
        raise CLIError("--checkpoint and --release-checkpoint exclude each other")
    config = _config(args, extra)
    checkpoint, report = release_checkpoint_for_engine(args.release_checkpoint, config, strict=not args.non_strict,
                                                       trust=args.trust_checkpoint)
    print(report.summary())
    return config, checkpoint


def _checkpoint_config(args, extra, checkpoint: Path):
    """The config for evaluating or predicting with ``checkpoint``: its stored one, with the
    command's options on top (a profile is needed only for bare weights)."""
    from mambaad_lib.engine.runner import stored_config

    stored = stored_config(checkpoint, trust=args.trust_checkpoint)
    if args.profile is None and not stored:
        raise CLIError(f"{checkpoint} holds weights only; pass --profile to say which model and data it is for")
    return _config(args, extra, base=stored if args.profile is None else None)


def _cmd_evaluate(args, extra) -> int:
    from mambaad_lib.engine import runner

    if args.release_checkpoint is not None:
        config, checkpoint = _release_checkpoint(args, extra)
    elif args.checkpoint is None:
        config = _config(args, extra)
        checkpoint = runner.find_checkpoint(config)
        logging.getLogger("mambaad_lib").info("evaluating the newest finished run: %s", checkpoint)
    else:
        checkpoint = Path(args.checkpoint)
        config = _checkpoint_config(args, extra, checkpoint)
    outcome = runner.evaluate(config, checkpoint, run_id=args.run_id, progress=not args.quiet,
                              trust=args.trust_checkpoint)
    _print_summary(outcome.record, outcome.results_file)
    return 0


def _cmd_predict(args, extra) -> int:
    from mambaad_lib.engine.predict import predict

    if args.release_checkpoint is not None:
        config, checkpoint = _release_checkpoint(args, extra)
    elif args.checkpoint is None:
        raise CLIError("pass --checkpoint (a run of ours) or --release-checkpoint (the authors' weights)")
    else:
        checkpoint = Path(args.checkpoint)
        config = _checkpoint_config(args, extra, checkpoint)
    csv_path = predict(config, checkpoint, args.inputs, args.out, resize=args.resize, progress=not args.quiet,
                       trust=args.trust_checkpoint, cls=args.cls)
    print(f"wrote {csv_path}, scores.jsonl and one map + overlay per image in {csv_path.parent}")
    return 0


def _cmd_calibrate(args, extra) -> int:
    from mambaad_lib.engine.predictor import calibrate_checkpoint

    if extra:
        raise CLIError(f"unrecognized arguments: {' '.join(extra)}")
    if not 0 < args.quantile < 1:
        raise CLIError(f"--quantile must be in (0, 1), got {args.quantile}")
    stored = calibrate_checkpoint(args.checkpoint, args.images, args.quantile, cls=args.cls, device=args.device,
                                  trust=args.trust_checkpoint)
    for name, calibration in stored.items():
        print(f"{name + ': ' if name else ''}image threshold {calibration.image_threshold:.6g}, pixel threshold "
              f"{calibration.pixel_threshold:.6g} (quantile {calibration.quantile:g} of {calibration.n_images} "
              f"normal images)")
    print(f"calibration stored in {args.checkpoint}")
    return 0


def _cmd_export(args, extra) -> int:
    from mambaad_lib.engine.export import export_checkpoint

    if extra:
        raise CLIError(f"unrecognized arguments: {' '.join(extra)}")
    report = export_checkpoint(args.checkpoint, args.export_format, args.out, cls=args.cls,
                               trust=args.trust_checkpoint)
    runtime = "onnxruntime" if report.format == "onnx" else "torch.export.load"
    checked = "not checked (onnxruntime is not installed)" if report.max_map_difference is None else \
        (f"{runtime} vs eager PyTorch on example images: max difference {report.max_map_difference:.2g} (maps), "
         f"{report.max_score_difference:.2g} (scores)")
    print(f"wrote {report.path} ({report.format}, input images (batch, 3, {report.metadata['input']['shape'][2]}, "
          f"{report.metadata['input']['shape'][3]})); {checked}")
    return 0


def _cmd_synth(args, extra) -> int:
    from mambaad_lib.data.synthetic import make_synthetic_dataset

    if args.profile is None:
        args.profile = "demo"
    config = _config(args, extra)
    meta = make_synthetic_dataset(config.data.root, name=config.data.name, seed=config.synthetic.seed,
                                  image_size=config.synthetic.image_size, n_train=config.synthetic.n_train,
                                  n_test=config.synthetic.n_test, classes=config.synthetic.classes,
                                  overwrite=args.overwrite)
    print(f"synthetic dataset written: {meta}")
    return 0


def _cmd_prep(args, extra) -> int:
    import importlib

    converter = importlib.import_module(f"data_prep.{args.dataset}")
    # The converter's own command line parses its options, so every converter option works here too.
    argv = ["--src", args.source, "--root", args.root, "--missing-mask", args.missing_mask,
            *(["--name", args.name] if args.name else []), *(["--link"] if args.link else []),
            *(["--dry-run"] if args.dry_run else []), *extra]
    return converter.main(argv)


def _cmd_validate(args, extra) -> int:
    from mambaad_lib.data.validate import check_dataset

    if extra:
        raise CLIError(f"unrecognized arguments: {' '.join(extra)}")
    report = check_dataset(args.root, args.name)
    problems = report.problems
    for problem in problems:
        print(problem)
    for note in report.notes:
        print(f"note: {note}")
    print(f"{args.root}/meta_{args.name}.json: " + (f"{len(problems)} problem(s)" if problems else "OK"))
    return 1 if problems else 0


def _cmd_info(args, extra) -> int:
    import numpy
    import torch
    import torchvision

    import mambaad_lib
    from mambaad_lib.engine.config import available_profiles
    from mambaad_lib.methods import METHODS, get_method_class
    from mambaad_lib.ops import AUTO_ORDER, backend_status, resolve_backend
    from mambaad_lib.utils.threads import thread_settings

    if extra:
        raise CLIError(f"unrecognized arguments: {' '.join(extra)}")
    print(f"mambaad-companion {mambaad_lib.__version__}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  torchvision {torchvision.__version__}  "
          f"numpy {numpy.__version__}  ({platform.platform()})")
    settings = thread_settings()
    print(f"cpu threads: {settings['intra_op_threads']} (chosen by {settings['chosen_by']}; "
          f"{settings['available_cpus']} of {settings['cpu_count']} cpus usable; "
          f"{settings['parallel_backend']}; load average {settings['load_average']})")
    print("thread environment: " + (", ".join(f"{name}={value}" for name, value in settings["environment"].items())
                                    or "none set"))
    if torch.cuda.is_available():
        print(f"cuda: {torch.version.cuda}, {torch.cuda.device_count()} device(s): "
              + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    else:
        print("cuda: not available (torch sees no GPU)")
    print("selective-scan backends:")
    for name, status in backend_status().items():
        print(f"  {name:<10} {status}")
    if backend_status()["cpu"] == "available":
        from mambaad_lib.ops.cpu import load_extension

        print("  cpu kernels built with " + ("AVX-512 recurrences" if load_extension().has_avx512()
                                            else "portable loops (no AVX-512)"))
    for device, order in AUTO_ORDER.items():
        try:
            chosen = resolve_backend("auto", device) if device == "cpu" or torch.cuda.is_available() else None
        except RuntimeError as error:
            chosen = f"none ({error})"
        if chosen:
            print(f"  auto on {device}: {chosen} (preference {', '.join(order)})")
    print("methods (learning type, one model per class?, sizes with a profile):")
    for name in sorted(METHODS):
        traits = get_method_class(name).traits()
        print(f"  {name:<17} {traits['learning_type']}, {'per class' if traits['per_class'] else 'unified'}"
              f"{', one pass' if traits['one_pass'] else ''}; profiles: {', '.join(traits['profiles']) or 'none'}")
    print(f"packaged profiles: {', '.join(available_profiles())}")
    print("ImageNet encoder weights: not checked (no network calls); use --encoder-weights PATH offline")
    return 0


def _cmd_reproduce(args, extra) -> int:
    from mambaad_lib.reproduce import run

    if extra:
        raise CLIError(f"unrecognized arguments: {' '.join(extra)}")
    return run(args)


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "predict": _cmd_predict, "calibrate": _cmd_calibrate,
            "export": _cmd_export, "synth": _cmd_synth,
            "prep": _cmd_prep, "validate-data": _cmd_validate, "info": _cmd_info, "reproduce": _cmd_reproduce}


def _print_summary(record: dict[str, Any], results_file: Path) -> None:
    from mambaad_lib.engine.distributed import current

    if not current().is_main:  # under torchrun rank 0 reports
        return
    for title, key in (("untrained", "metrics_untrained"), ("result", "metrics")):
        metrics = record.get(key)
        if not metrics:
            continue
        for protocol, values in metrics.items():
            mean = values["mean"]
            shown = "  ".join(f"{name} {value:.3f}" if value is not None else f"{name} nan"
                              for name, value in mean.items())
            print(f"{title:>9} [{protocol}]  {shown}")
    print(f"results: {results_file}")


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    library = logging.getLogger("mambaad_lib")
    library.handlers[:] = [handler]
    library.setLevel(logging.WARNING if quiet else logging.INFO)
    library.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mambaad`` console script; returns the exit status."""
    from mambaad_lib.utils.threads import configure_threads, set_default_wait_policy

    set_default_wait_policy()  # before torch loads the OpenMP runtime: short spins unless the user chose
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _configure_logging(args.quiet)
    try:
        configure_threads(args.threads)  # once per process; recorded with results (thread_settings)
        return COMMANDS[args.command](args, extra)
    except KeyboardInterrupt as interrupt:
        print(f"mambaad: {interrupt or 'interrupted'}", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, RuntimeError, KeyError, ImportError) as error:
        if args.debug:
            raise
        print(f"mambaad: error: {_error_message(error)}", file=sys.stderr)
        return 2


def _error_message(error: Exception) -> str:
    """The message of an expected error; operating-system errors (disk full, permissions) as
    one line naming the path."""
    from mambaad_lib.utils.errors import os_error_message

    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    if isinstance(error, OSError) and error.errno is not None:
        return os_error_message(error)
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
