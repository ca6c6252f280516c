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
# # Scan orders and directions (Table 3)
#
# **The paper's claim.** An SS2D block reads the 2-D feature map as 1-D sequences. The
# order matters little among single methods (sweep, snake scan, Z-order, zigzag, Hilbert all
# reach about 98 image AUROC), eight Hilbert directions are the best row, and mixing two
# methods is worse than either alone.
#
# **What this notebook does.** It draws every scan path on 8x8 and 16x16 grids and the
# eight directions, then trains the Table 3 rows the profile can afford with the same
# model, changing only the scan.
#
# **What to look for.** Hilbert and Z-order keep neighbouring tokens close in the sequence
# (locality); sweep jumps at every row end. Whether that changes the metrics needs the
# `paper` profile: at `demo` size the differences are noise.

# %% tags=["parameters"]
profile = "smoke"            # smoke | demo | paper
dataset_root = "data"
dataset_name = "synthetic"
device = "cpu"
seed = 0
results_root = "results"
runs_root = "runs"
# Table 3's rows: a scan method and a direction count (mixed rows: a mapping method -> count).
grid = [
    {"label": "sweep x8", "scan": "sweep", "directions": 8},
    {"label": "scan x8", "scan": "scan", "directions": 8},
    {"label": "zorder x8", "scan": "zorder", "directions": 8},
    {"label": "zigzag x8", "scan": "zigzag", "directions": 8},
    {"label": "hilbert x2", "scan": "hilbert", "directions": 2},
    {"label": "hilbert x4", "scan": "hilbert", "directions": 4},
    {"label": "hilbert x8", "scan": "hilbert", "directions": 8},
    {"label": "zigzag4 + hilbert4", "scan": {"zigzag": 4, "hilbert": 4}, "directions": 8},
    {"label": "zorder4 + hilbert4", "scan": {"zorder": 4, "hilbert": 4}, "directions": 8},
    {"label": "scan4 + hilbert4", "scan": {"scan": 4, "hilbert": 4}, "directions": 8},
    {"label": "sweep4 + hilbert4", "scan": {"sweep": 4, "hilbert": 4}, "directions": 8},
    {"label": "scan2 + zorder2 + zigzag2 + hilbert2", "scan": {"scan": 2, "zorder": 2, "zigzag": 2, "hilbert": 2},
     "directions": 8},
]
trained_rows = {
    "smoke": ["hilbert x2"],
    "demo": ["sweep x8", "zigzag x8", "hilbert x2", "hilbert x8"],
    "paper": [row["label"] for row in grid if isinstance(row["scan"], str)],
}
path_grids = [8, 16]         # grid sides of the scan-path figure

# %%
import pandas as pd
from IPython.display import Markdown, display

from mambaad_lib import experiments as ex
from mambaad_lib import viz

NOTEBOOK = "03_scan_methods"
settings = ex.training_settings("ablation", profile)
figures = ex.output_dir(results_root, NOTEBOOK, profile)
ex.ensure_dataset(dataset_root, dataset_name, settings.base_profile)
trained = trained_rows[profile]
display(Markdown(
    f"**Run here (profile `{profile}`):** trained and evaluated: {', '.join(trained)}; paper values only: "
    f"{', '.join(r['label'] for r in grid if r['label'] not in trained)}. Training settings: "
    f"{settings.describe()}. The mixed rows are not trained in any profile: the engine's "
    "`model.scan` option takes one method name (a mapping of methods is available in "
    "`mambaad_lib.models.build_mambaad(scan={...})` but not yet in run configs)."))

# %% [markdown]
# ## The five scan paths
# Each panel is the forward direction of one method: the line visits the cells in order,
# from the green circle to the red square.

# %%
viz.save_figure(viz.plot_scan_paths(sizes=path_grids), figures / "scan_paths.png")

# %% [markdown]
# ## The eight directions
# Every SS2D block scans four views of the grid (identity, transpose, rotation, transposed
# rotation), each forward and reversed. For Hilbert, directions 6 and 7 repeat 1 and 0
# (the curve is its own mirror image reversed), so eight Hilbert directions are six distinct
# sequences, as in the release.

# %%
viz.save_figure(viz.plot_scan_directions("hilbert", path_grids[0]), figures / "hilbert_directions.png")

# %%
viz.save_figure(viz.plot_scan_directions("zigzag", path_grids[0]), figures / "zigzag_directions.png")

# %% [markdown]
# ## Train the chosen rows
# Scans change no parameter: every row has the same parameter and FLOP count.

# %%
rows = ex.run_grid(grid, settings, trained, notebook=NOTEBOOK, profile=profile, dataset_root=dataset_root,
                   dataset_name=dataset_name, device=device, seed=seed, results_root=results_root,
                   runs_root=runs_root)

# %% [markdown]
# ## Ours beside Table 3 (percent)
# Paper: MVTec-AD, ResNet34 [3,4,6,3] with ImageNet weights, release evaluation. Ours: the
# settings printed above, both protocols.

# %%
paper = {ex.scan_row_label(r): r for r in ex.paper_rows("scan_methods")}
table = ex.ours_vs_paper(rows, paper, keys=("i_auroc", "p_auroc", "p_aupro", "mAD"))
table

# %%
trained_results = [r for r in rows if r["trained"]]
viz.save_figure(viz.plot_ours_vs_paper(
    [r["label"] for r in trained_results], [ex.pct(r.get("ader.p_auroc")) for r in trained_results],
    [paper[r["label"]]["p_auroc"] for r in trained_results], "pixel AUROC (%)",
    f"pixel AUROC per scan: ours ({profile}, ader protocol) vs paper", ours_name=f"ours ({profile})"),
    figures / "p_auroc_bars.png")

# %%
summary = ex.write_summary(results_root, NOTEBOOK, profile, {
    "settings": settings.describe(), "dataset": dataset_name, "trained_rows": trained, "rows": rows})
print(f"summary written to {summary}")

# %% [markdown]
# ## Try it yourself
# - `viz.plot_scan_paths(["hilbert", "zorder"], sizes=[4, 8, 32])`: how far apart in the
#   sequence are two cells that touch in the image, for each curve?
# - Train `hilbert x1` (add `{"label": "hilbert x1", "scan": "hilbert", "directions": 1}`
#   to `grid` and to `trained_rows`): does a single direction hurt pixel metrics more than
#   image metrics?
# - Change `seed` and rerun the demo rows: how large is the seed-to-seed spread compared
#   with the spread between scan methods?
