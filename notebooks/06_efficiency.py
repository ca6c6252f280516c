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
# **The paper's claim.** Mamba's selective scan is linear in the sequence length, so
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
# depend on the machine. The book's demo timings were taken on a 2-core CPU shared with
# other jobs, batch 1, best of two calls: read them as orders of magnitude; the benchmark
# files (`benchmarks/*.py`, repeated runs) are the careful measurements.

# %% tags=["parameters"]
profile = "smoke"            # smoke | demo | paper
dataset_root = "data"
dataset_name = "synthetic"
device = "cpu"
seeds = [0]                  # the first seeds the random-weight models
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
    display(Markdown(f"**{title}**"))
    display(table)
if not bench_tables:
    print("no benchmark files in results/benchmarks/ yet: run python benchmarks/bench_scan.py")

# %%
if bench_model:
    names = list(bench_model["backends"])
    display(viz.save_figure(viz.plot_bars(
        names, [bench_model["backends"][name]["inference_images_per_s"] for name in names], "images / s",
        f"benchmarks/bench_model.py: inference, {bench_model['image_size']}px, batch {bench_model['batch']}"),
        ctx.figures / "bench_model.png"))

# %% [markdown]
# ## Model throughput per scan backend (measured here)

# %%
backend_rows = [ex.time_inference(backend_size[profile], repeats=repeats[profile], scan_backend=name,
                                  device=device, seed=ctx.seeds[0], **model) for name in timed_backends]
by_backend = pd.DataFrame(backend_rows).set_index("scan_backend")
by_backend

# %%
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
scaling

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
# ## Try it yourself
# - `timed_model["demo"] = {"backbone": "resnet34", "depths": [3, 4, 6, 3]}`: the paper's
#   model; what share of its FLOPs is the frozen encoder (`ex.cost_row(...)` and
#   `mambaad_lib.models.costs.count_flops(...)["by_part"]`)?
# - Set `MAMBAAD_SCAN_BACKEND=reference` before starting Jupyter and rerun: how much of the
#   model's time is the scan?
# - On a GPU (`device = "cuda"`, `pip install -e ".[cuda]"`), the `mamba_ssm` and
#   `chunked` backends appear in the backend table.
