# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Efficiency: selective-scan backends, throughput, cost growth with image size
#
# **The paper's claim** ([arXiv:2404.06564](https://arxiv.org/abs/2404.06564), Sec. 1 and
# Sec. 4.3, efficiency comparison; Table 2). Mamba's selective scan is linear in the sequence length, so
# MambaAD models global context at a cost that grows with the number of pixels (quadratic
# in the image side), not with its square as self-attention would. Table 2 lists the
# parameters and FLOPs of every backbone/depth.
#
# **What this notebook does.** It shows the scan benchmarks written by `benchmarks/`
# (when present), times the model on this machine with every available scan backend,
# measures how FLOPs and time grow with the image side (128..512) on log axes, and puts
# parameters/FLOPs beside AUROC (ours from the backbones chapter, and the paper's).
#
# **What to look for.** Slopes on the log-log plot: 2 means cost proportional to the pixel
# count. Speed-ups are ratios measured in one process on one machine; absolute images/s
# depend on the machine. Every timing of the book goes through one routine
# (`ex.time_models`): batch 1, the timed models taking turns, best of `repeats` calls after
# a warm-up round; the benchmark files (`benchmarks/*.py`, repeated runs) are the careful
# measurements.

# %% tags=["parameters"]
profile = "smoke"            # smoke | demo | paper
dataset_root = "data"
dataset_name = "synthetic"
device = "cpu"
seeds = None                 # the first seeds the random-weight models (None: the profile's)
results_root = "results"
runs_root = "runs"
# Timed model and image sides, per profile.
timed_model = {
    "smoke": {"backbone": "resnet18", "depths": [1, 1, 1, 1]},
    "demo": {"backbone": "resnet18", "depths": [2, 2, 2, 2]},
    "paper": {"backbone": "resnet34", "depths": [3, 4, 6, 3]},
}
sizes = {"smoke": [64, 128], "demo": [128, 256, 512], "paper": [128, 256, 512]}
flops_sizes = [128, 256, 512]   # FLOPs are counted without running the model: always the full range
backend_size = {"smoke": 64, "demo": 128, "paper": 256}
repeats = {"smoke": 1, "demo": 2, "paper": 5}
# Scan backends timed (None: every backend available on the device). `chunked` is a GPU
# path (slow on a CPU), so the demo times the fused `cpu` kernel against the `reference`.
backends = {"smoke": ["cpu", "reference"], "demo": ["cpu", "reference"], "paper": None}

# %%
from mambaad_lib import experiments as ex
from mambaad_lib import viz

ctx = ex.Context.from_parameters("06_efficiency", globals())
model = timed_model[profile]

# %%
import pandas as pd
from IPython.display import Markdown, display

from mambaad_lib.ops import available_backends


timed_backends = [name for name in available_backends(device) if backends[profile] is None or name in backends[profile]]
display(Markdown(
    f"**Run here (profile `{profile}`):** random-weight model {model} on `{device}`, batch 1, best of "
    f"{repeats[profile]} timed calls after one warm-up; backends {timed_backends} at "
    f"{backend_size[profile]}x{backend_size[profile]}; image sides {sizes[profile]} timed, "
    f"{flops_sizes} counted. No training here."))

# %% [markdown]
# ## Scan benchmarks (`results/benchmarks/`)
# Written by `python benchmarks/bench_scan.py` and `benchmarks/bench_model.py`, with the
# machine and versions recorded in each file.

# %%
bench_model = ex.load_benchmark("bench_model")
bench_tables = ex.benchmark_tables(ex.load_benchmark("bench_scan"), bench_model)
for title, table in bench_tables.items():
    display(ex.for_display(table, caption=title, digits=2))
if not bench_tables:
    print("no benchmark files in results/benchmarks/ yet: run python benchmarks/bench_scan.py")

# %%
if bench_model and len(bench_model["backends"]) > 1:  # one bar compares nothing
    names = list(bench_model["backends"])
    display(viz.save_figure(viz.plot_bars(
        names, [bench_model["backends"][name]["inference_images_per_s"] for name in names], "images / s",
        f"benchmarks/bench_model.py: inference, {bench_model['image_size']}px, batch {bench_model['batch']}"),
        ctx.figures / "bench_model.png"))

# %% [markdown]
# ## Model throughput per scan backend (measured here)

# %%
by_name = ex.time_models(backend_size[profile], {name: {**model, "scan_backend": name} for name in timed_backends},
                         repeats=repeats[profile], device=device, seed=ctx.seeds[0])
backend_rows = list(by_name.values())
by_backend = pd.DataFrame(backend_rows).set_index("scan_backend")
ex.for_display(by_backend, caption=f"Inference per scan backend, {backend_size[profile]}px, batch 1, {device}, "
                                   "timed in turns.", digits=3)

# %%
if len(by_backend) > 1:  # one bar compares nothing
    viz.save_figure(viz.plot_bars(list(by_backend.index), list(by_backend["images_per_s"]), "images / s (batch 1)",
                                  f"inference throughput per scan backend, {backend_size[profile]}px, {device}"),
                    ctx.figures / "backends.png")

# %% [markdown]
# ## Cost growth with the image side
# GFLOPs (counted on the meta device, dense layers only; the scan recurrence apart) and
# measured seconds per image, on log-log axes.

# %%
counted = [ex.cost_row(f"{size}px", size, **model) for size in flops_sizes]
timed = [ex.time_inference(size, repeats=repeats[profile], device=device, seed=ctx.seeds[0], **model) for size in sizes[profile]]
scaling = pd.concat([
    pd.DataFrame({"GFLOPs (dense)": [r["flops_g"] for r in counted],
                  "GFLOPs (scan recurrence)": [r["scan_flops_g"] for r in counted]}, index=flops_sizes),
    pd.Series({r["image_size"]: r["seconds"] for r in timed}, name="seconds / image (here)")], axis=1).sort_index()
scaling.index.name = "image side"
ex.for_display(scaling, caption="GFLOPs counted at every side; seconds per image measured at the sides timed in "
                                "this profile.", digits=3)

# %%
viz.save_figure(viz.plot_scaling(flops_sizes, {"dense GFLOPs": [r["flops_g"] for r in counted],
                                               "scan GFLOPs": [r["scan_flops_g"] for r in counted]},
                                 "GFLOPs per image", "counted FLOPs vs image side"), ctx.figures / "flops_scaling.png")

# %%
viz.save_figure(viz.plot_scaling(sizes[profile], {"seconds / image": [r["seconds"] for r in timed]},
                                 "seconds per image (batch 1)", f"measured time vs image side ({device})"),
                ctx.figures / "time_scaling.png")

# %% [markdown]
# ## Parameters and FLOPs against AUROC
# The paper's Table 2 rows, and ours from the backbones chapter (same profile) where it has
# been run: our AUROC comes from the training settings stated there, not the paper's.

# %%
try:
    backbones = ctx.read_summary("02_backbones_depths")
except FileNotFoundError:
    backbones = None  # notebook 02 has not run at this profile: the paper's points only
points = ex.cost_vs_auroc_points(backbones, profile)
viz.save_figure(viz.plot_cost_vs_metric(points, "flops_g", "i_auroc", "GFLOPs at 256x256 (log)",
                                        "image AUROC (%)", "FLOPs vs image AUROC"), ctx.figures / "flops_vs_auroc.png")

# %%
viz.save_figure(viz.plot_cost_vs_metric(points, "params_m", "i_auroc", "parameters (M, log)",
                                        "image AUROC (%)", "parameters vs image AUROC"),
                ctx.figures / "params_vs_auroc.png")

# %%
summary = ctx.write_summary({
    "model": model, "backends": backend_rows, "scaling_counted": counted, "scaling_timed": timed,
    "benchmarks": list(bench_tables), "cost_vs_auroc": points})
print(f"summary written to {summary}")

# %% [markdown]
# ## What we found

# %%
import numpy as np


def loglog_slope(sides, values):
    """Exponent p of cost ~ side^p: the least-squares slope on log-log axes."""
    return float(np.polyfit(np.log(sides), np.log(values), 1)[0])


sentences = [
    f"Counted FLOPs grow as side^{loglog_slope(flops_sizes, [r['flops_g'] for r in counted]):.2f} (dense layers) "
    f"and side^{loglog_slope(flops_sizes, [r['scan_flops_g'] for r in counted]):.2f} (scan recurrence) over "
    f"{flops_sizes[0]}-{flops_sizes[-1]} px: an exponent of 2 is cost proportional to the pixel count, linear in "
    "the sequence length as the paper claims.",
    (f"Measured time grows as side^{loglog_slope(sizes[profile], [r['seconds'] for r in timed]):.2f} over "
     f"{sizes[profile][0]}-{sizes[profile][-1]} px on `{device}` (fixed per-call costs pull it below the FLOPs' "
     "exponent at small sides).") if len(sizes[profile]) > 1 else None,
    (f"Scan backends at {backend_size[profile]}px: " + ", ".join(
        f"{name} {by_name[name]['images_per_s']:.2f} images/s" for name in by_name) +
     (f"; `cpu` is {by_name['cpu']['images_per_s'] / by_name['reference']['images_per_s']:.1f}x the `reference` "
      "backend" if {"cpu", "reference"} <= set(by_name) else "") + ".") if by_name else None,
]
display(Markdown(ex.findings(sentences)))

# %% [markdown]
# ## Try it yourself
# - `timed_model["demo"] = {"backbone": "resnet34", "depths": [3, 4, 6, 3]}`: the paper's
#   model; what share of its FLOPs is the frozen encoder (`ex.cost_row(...)` and
#   `mambaad_lib.models.costs.count_flops(...)["by_part"]`)?
# - Set `MAMBAAD_SCAN_BACKEND=reference` before starting Jupyter and rerun: how much of the
#   model's time is the scan?
# - On a GPU (`device = "cuda"`, `pip install -e ".[cuda]"`), the `mamba_ssm` and
#   `chunked` backends appear in the backend table.
