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
# # Backbones and decoder depths (Table 2)
#
# **The paper's claim** ([arXiv:2404.06564](https://arxiv.org/abs/2404.06564), Sec. 4.3,
# Table 2). ResNet34 with decoder depths [3,4,6,3] is the chosen trade-off: ResNet18 is the
# weakest encoder; ResNet50 and WideResNet50 cost several times the FLOPs (the ratios are
# computed below) for a small or no gain, and the paper acknowledges that WideResNet50 is
# slightly better on some metrics.
#
# **What this notebook does.** For every row of Table 2 it counts parameters and FLOPs at
# the paper's 256x256 (exact, for every profile), measures inference throughput on this
# machine, and trains and evaluates the rows the profile can afford. Untrained rows are
# reported by cost only. Metrics are in percent, paper values beside ours.
#
# **What to look for.** Parameter and FLOP counts should match the paper to a fraction of a
# percent (they do not depend on data). The `demo` profile trains the decoder-depth rows on a
# random encoder at 64x64, three seeds each, to a plateau of the training loss: read a
# difference only where it exceeds the seed spread, and never as a ranking of backbones.

# %% tags=["parameters"]
profile = "smoke"            # smoke | demo | paper
dataset_root = "data"
dataset_name = "synthetic"
device = "cpu"
seeds = None                 # None: the profile's seeds (smoke [0], demo and paper [0, 1, 2])
results_root = "results"
runs_root = "runs"
# The Table 2 grid: row label -> backbone and decoder depths (R18 [1,1,1,1], the demo's base
# model, is not a row of the paper's table).
grid = [
    {"label": "R18 [1,1,1,1]", "backbone": "resnet18", "depths": [1, 1, 1, 1]},
    {"label": "R18 [2,2,2,2]", "backbone": "resnet18", "depths": [2, 2, 2, 2]},
    {"label": "R18 [3,4,6,3]", "backbone": "resnet18", "depths": [3, 4, 6, 3]},
    {"label": "R34 [2,2,2,2]", "backbone": "resnet34", "depths": [2, 2, 2, 2]},
    {"label": "R34 [2,9,2,2]", "backbone": "resnet34", "depths": [2, 9, 2, 2]},
    {"label": "R34 [3,4,6,3]", "backbone": "resnet34", "depths": [3, 4, 6, 3]},
    {"label": "R50 [3,4,6,3]", "backbone": "resnet50", "depths": [3, 4, 6, 3]},
    {"label": "WRN50 [3,4,6,3]", "backbone": "wide_resnet50_2", "depths": [3, 4, 6, 3]},
]
# Rows trained per profile (the others: parameters, FLOPs and throughput only). The demo
# trains the depth comparison on three seeds; a ResNet34 [3,4,6,3] row would cost about 3x
# the base model's training time per seed, more than the book's CPU budget leaves.
trained_rows = {
    "smoke": ["R18 [2,2,2,2]"],
    "demo": ["R18 [1,1,1,1]", "R18 [2,2,2,2]"],
    "paper": [row["label"] for row in grid],
}
throughput_size = {"smoke": 64, "demo": 128, "paper": 256}   # image side of the throughput runs
timed_rows = {"smoke": ["R18 [2,2,2,2]"], "demo": [row["label"] for row in grid], "paper": [row["label"] for row in grid]}

# %%
from mambaad_lib import experiments as ex
from mambaad_lib import viz

ctx = ex.Context.from_parameters("02_backbones_depths", globals())
settings = ex.training_settings("ablation", profile)

# %%
import pandas as pd
from IPython.display import Markdown, display

ctx.ensure_dataset()
trained = trained_rows[profile]
display(Markdown(
    f"**Run here (profile `{profile}`):** trained and evaluated: {', '.join(trained)}; "
    f"reported by parameters, FLOPs and throughput only: "
    f"{', '.join(r['label'] for r in grid if r['label'] not in trained) or 'none'}. "
    f"Training settings: {settings.describe()}. Throughput: batch 1 at "
    f"{throughput_size[profile]}x{throughput_size[profile]} on `{device}` for {', '.join(timed_rows[profile])}."))

# %% [markdown]
# ## Train the chosen rows, count every row
# Each row's model options replace the base model's (`backbone`, `depths`).

# %%
rows = ex.run_grid(ctx, grid, settings, trained)
models = {row["label"]: row["model"] for row in rows if row["label"] in timed_rows[profile]}
timings = ex.time_models(throughput_size[profile], models, device=device, seed=ctx.seeds[0])
throughput = {label: timing["images_per_s"] for label, timing in timings.items()}

# %% [markdown]
# ## Costs: ours vs the paper (256x256)
# Parameters include the frozen encoder; FLOPs count one multiply-accumulate as one FLOP,
# as the paper does (see the model-costs page). Throughput is measured here, on this machine,
# batch 1, by the book's one timing routine (`ex.time_models`, also used by the efficiency
# chapter): the models take turns, best of three calls each after a warm-up round, so a
# load change on a shared CPU affects every row alike; read the ratios between rows.

# %%
paper = {f"{ex.short_backbone(r['backbone'])} {r['decoder_depth'].replace(' ', '')}": r
         for r in ex.paper_rows("backbone_depth")}
costs = pd.DataFrame([{
    "row": r["label"], "trained here": r["trained"],
    "params (M) ours": round(r["params_m_256"], 2), "params (M) paper": paper.get(r["label"], {}).get("params_m"),
    "GFLOPs ours": round(r["flops_g_256"], 2), "GFLOPs paper": paper.get(r["label"], {}).get("flops_g"),
    f"images/s here ({throughput_size[profile]}px, batch 1)": round(throughput[r["label"]], 2)
    if r["label"] in throughput else None,
} for r in rows]).drop_duplicates("row").set_index("row")
ex.for_display(costs, caption="Parameters and GFLOPs at 256x256, ours (counted) and the paper's Table 2; "
                              "throughput measured here.", digits=2)

# %% [markdown]
# ## Metrics of the trained rows beside the paper's (percent)
# Ours: `standard` and `ader` protocols, at the training settings printed above. Paper:
# Table 2 (MVTec-AD, ImageNet encoder, 256x256; release evaluation).

# %%
metrics = ex.ours_vs_paper(rows, {label: paper[label] for label in paper}, keys=("i_auroc", "p_auroc", "p_aupro", "mAD"))
ex.for_display(metrics, caption=f"Metrics (%): ours ({profile}, mean over {len(ctx.seeds)} seed(s)) beside Table 2.")

# %% [markdown]
# ## The trained rows over seeds, and their loss curves
# Mean ± standard deviation over the seeds (percent, standard protocol); the plateau rule
# (`mambaad_lib.engine.convergence`): the loss fell by less than 2.5% over the last tenth of
# the epochs.

# %%
trained_only = [r for r in rows if r["trained"]]
ex.for_display(ex.seed_table(trained_only, ex.SEED_KEYS),
               caption=f"Trained rows (%), mean ± std over {len(ctx.seeds)} seed(s), standard protocol.")

# %%
viz.save_figure(viz.plot_loss_curves(trained_only, f"training loss ({profile} profile)"), ctx.figures / "loss.png")

# %%
viz.save_figure(viz.plot_ours_vs_paper(
    list(metrics.index), list(metrics[("i_auroc", "ours (ader)")]), list(metrics[("i_auroc", "paper")]),
    "image AUROC (%)", f"image AUROC: ours ({profile}, ader protocol; gaps = not trained) vs paper",
    ours_name=f"ours ({profile})"), ctx.figures / "i_auroc_bars.png")

# %%
summary = ctx.write_summary({
    "settings": settings.describe(), "trained_rows": trained, "rows": rows, "throughput": throughput,
    "throughput_size": throughput_size[profile]})
print(f"summary written to {summary}")

# %% [markdown]
# ## What we found

# %%
counted = {r["label"]: r for r in rows}
base = "R34 [3,4,6,3]"
metric_names = {"i_auroc": "image AUROC", "i_ap": "image AP", "i_f1max": "image F1-max", "p_auroc": "pixel AUROC",
                "p_ap": "pixel AP", "p_f1max": "pixel F1-max", "p_aupro": "pixel AU-PRO"}
wrn_better = [name for key, name in metric_names.items() if paper["WRN50 [3,4,6,3]"][key] > paper[base][key]]
stats = ex.seed_stats(rows, "ader.i_auroc")
pixel = ex.seed_stats(rows, "standard.p_auroc")
deeper, shallower = "R18 [2,2,2,2]", "R18 [1,1,1,1]"
sentences = [
    "Cost, from our counts at 256x256: " + ", ".join(
        f"{label} costs {counted[label]['flops_g_256'] / counted[base]['flops_g_256']:.1f}x the FLOPs and "
        f"{counted[label]['params_m_256'] / counted[base]['params_m_256']:.1f}x the parameters of {base}"
        for label in ("R50 [3,4,6,3]", "WRN50 [3,4,6,3]")) +
    f" (the paper's Table 2: {paper['R50 [3,4,6,3]']['flops_g'] / paper[base]['flops_g']:.1f}x and "
    f"{paper['WRN50 [3,4,6,3]']['flops_g'] / paper[base]['flops_g']:.1f}x the FLOPs).",
    f"In the paper, WideResNet50 beats {base} on {len(wrn_better)} of {len(metric_names)} metrics "
    f"({', '.join(wrn_better) or 'none'}), by at most "
    f"{max((paper['WRN50 [3,4,6,3]'][k] - paper[base][k] for k in metric_names), default=0):.1f} points; "
    f"ResNet18 [2,2,2,2] is {paper[base]['i_auroc'] - paper['R18 [2,2,2,2]']['i_auroc']:.1f} image AUROC points "
    f"below {base}.",
    "Throughput here (images/s, batch 1, timed in turns): " + ", ".join(
        f"{label} {value:.2f}" for label, value in throughput.items()) + ".",
    ex.best_row_sentence(stats, "image AUROC (ader)"),
    ex.comparison_sentence(pixel, deeper, shallower, "Pixel AUROC (standard)") + " The random encoder is the same "
    "in both rows, so this isolates the decoder's depth." if deeper in pixel and shallower in pixel else None,
    ex.plateau_sentence(rows),
    ex.chance_sentence(stats, "image AUROC", settings.describe()),
    ex.provenance_sentence(rows),
]
display(Markdown(ex.findings(sentences)))

# %% [markdown]
# ## Try it yourself
# - Add `"R34 [3,4,6,3]"` (the paper's model) to `trained_rows["demo"]`: about 3x the base
#   model's training time per seed. With a random encoder, does a deeper backbone help?
# - Train the ResNet50 row in the demo profile (add it to `trained_rows["demo"]`) and
#   compare its throughput with ResNet34's: where do the extra FLOPs come from (look at
#   `mambaad_lib.models.costs.count_flops(...)["by_part"]`)?
# - With real data and a GPU (`profile = "paper"`), which row gives the best mAD per GFLOP?
