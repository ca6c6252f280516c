"""Parameters and FLOPs of the seven Table 2 models (backbone x decoder depth), ours vs the paper.

Models are built on the meta device (no memory, no initialisation), counted with
``mambaad_lib.models.costs.count_parameters`` (float parameters, frozen encoder included) and
``count_flops`` (convolutions, linears, SS2D projections and norms at 256x256, one
multiply-accumulate = one FLOP; the selective-scan recurrence is listed apart).
Prints a markdown table and writes it to ``book/model_costs.md`` and, with provenance, to
``results/benchmarks/model_costs.json``.

    python benchmarks/param_table.py
    python benchmarks/param_table.py --paper-csv /path/to/backbone_depth.csv
"""
from __future__ import annotations

import argparse
import ast
import csv
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from mambaad_lib.utils.files import atomic_write_json, atomic_write_text
from mambaad_lib.engine.results import environment
from mambaad_lib.paper import PAPER_DIR
from mambaad_lib.models import build_mambaad
from mambaad_lib.models.costs import count_flops, count_parameters

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV_CANDIDATES = (PAPER_DIR / "backbone_depth.csv",)
BACKBONES = {"ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50",
             "WideResNet50": "wide_resnet50_2"}
IMAGE_SIZE = 256


def read_table2(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        raise FileNotFoundError(f"paper table not found: {path} (pass --paper-csv)")
    with path.open() as handle:
        return [{"paper_backbone": row["backbone"], "backbone": BACKBONES[row["backbone"]],
                 "depths": list(ast.literal_eval(row["decoder_depth"])),
                 "paper_params_m": float(row["params_m"]), "paper_flops_g": float(row["flops_g"])}
                for row in csv.DictReader(handle)]


def measure(row: dict[str, object]) -> dict[str, object]:
    with torch.device("meta"):
        model = build_mambaad(backbone=row["backbone"], depths=row["depths"], image_size=IMAGE_SIZE)
    params = count_parameters(model)
    flops = count_flops(model, image_size=IMAGE_SIZE)
    return {
        **row,
        "params_m": params["total"] / 1e6, "trainable_m": params["trainable"] / 1e6,
        "params_total": params["total"], "params_trainable": params["trainable"],
        "params_rel_err": params["total"] / 1e6 / row["paper_params_m"] - 1,
        "flops_g": flops["total"], "flops_rel_err": flops["total"] / row["paper_flops_g"] - 1,
        "flops_by_part_g": flops["by_part"], "scan_flops_g": flops["scan"],
        "scan_state_updates_g": flops["scan_state_updates"],
    }


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| backbone | decoder depths | params (M) ours | paper | rel. err. | trainable (M) "
        "| GFLOPs ours | paper | rel. err. | scan GFLOPs (apart) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['paper_backbone']} | {r['depths']} | {r['params_m']:.2f} | {r['paper_params_m']:.1f} "
            f"| {100 * r['params_rel_err']:+.2f}% | {r['trainable_m']:.2f} | {r['flops_g']:.2f} "
            f"| {r['paper_flops_g']:.1f} | {100 * r['flops_rel_err']:+.2f}% | {r['scan_flops_g']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-csv", type=Path,
                        default=next((p for p in PAPER_CSV_CANDIDATES if p.is_file()), PAPER_CSV_CANDIDATES[0]))
    parser.add_argument("--markdown-out", type=Path, default=REPO / "book" / "model_costs.md")
    parser.add_argument("--json-out", type=Path, default=REPO / "results" / "benchmarks" / "model_costs.json")
    args = parser.parse_args(argv)

    rows = [measure(row) for row in tqdm(read_table2(args.paper_csv), desc="Table 2 models", unit="model")]
    table = markdown(rows)
    print(table)
    header = ("# Model costs: Table 2, ours vs the paper\n\n"
              "Produced by `python benchmarks/param_table.py` (meta-device models, "
              "`mambaad_lib.models.costs.count_parameters` / `count_flops` at 256x256).\n\n"
              "Parameters are floating-point parameters including the frozen encoder (stem + layer1..3); "
              "scan index tensors are buffers and not counted. GFLOPs count convolutions, linears, the SS2D "
              "projections and norms with one multiply-accumulate = one FLOP, as the paper does; the "
              "selective-scan recurrence (9 FLOPs per state update plus the D skip, mamba-ssm's rule) is "
              "listed apart and is not in the total.\n\n")
    args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.markdown_out, header + table)
    atomic_write_json(args.json_out, {
        "benchmark": "model_costs", "image_size": IMAGE_SIZE, "paper_csv": str(args.paper_csv),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": environment(), "rows": rows,
    })
    print(f"wrote {args.markdown_out} and {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
