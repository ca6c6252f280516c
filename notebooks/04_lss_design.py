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
# # The LSS module: local branches, kernels, HSS blocks per LSS, residual
#
# **The paper's claim** ([arXiv:2404.06564](https://arxiv.org/abs/2404.06564), Sec. 3.3 and
# Sec. 4.3, the LSS table). A Locality-Enhanced State Space (LSS) module runs a global branch
# (a chain of HSS blocks: Mamba scans) beside local convolution branches with several kernel
# sizes. Its ablation varies the local branch (only a depthwise convolution, or 1x1 +
# depthwise + 1x1), the kernel set, the number of HSS blocks per LSS (one, or the final
# rule: 3, with 2 in the depth-4 stage) and the residual connection; the final design (two
# kernels 5 and 7, DWConv + Conv, residual) is best.
#
# **What this notebook does.** It builds the 21 rows of the paper's table as grid rows,
# trains the subset the profile can afford (same data, same schedule, only the LSS options
# change) and prints ours beside the paper's.
#
# **What to look for.** Parameter counts show what each option costs. The `demo` profile
# trains two local-branch designs on three seeds each (random encoder, 64x64): read a
# difference only where it exceeds the seed spread.

# %% tags=["parameters"]
profile = "smoke"            # smoke | demo | paper
dataset_root = "data"
dataset_name = "synthetic"
device = "cpu"
seeds = None                 # None: the profile's seeds (smoke [0], demo and paper [0, 1, 2])
results_root = "results"
runs_root = "runs"
# The grid is the paper's LSS table (mambaad_lib.experiments.lss_grid()); labels are
# "G<group> <local conv> <kernels>": G1 one HSS per LSS, G2 the same without residual,
# G3 the final HSS rule; "dw" only depthwise, "conv1x1+dw" DWConv + Conv.
trained_rows = {
    "smoke": ["G3 conv1x1+dw 5,7"],
    "demo": ["G3 conv1x1+dw 5,7", "G3 dw 5,7"],
    "paper": "all",
}
demo_depths = None           # decoder depths of the demo rows (None: the demo's base model, [1,1,1,1]);
                             # [2,2,2,2] gives every stage two blocks, so that G1 and G3 differ

# %%
from mambaad_lib import experiments as ex
from mambaad_lib import viz

ctx = ex.Context.from_parameters("04_lss_design", globals())
settings = ex.training_settings("ablation", profile)

# %%
import pandas as pd
from IPython.display import Markdown, display

if profile == "demo" and demo_depths:
    settings = settings.replace(architecture={"depths": tuple(demo_depths)})
ctx.ensure_dataset()
grid = ex.lss_grid()
trained = [row["label"] for row in grid] if trained_rows[profile] == "all" else trained_rows[profile]
display(Markdown(
    f"**Run here (profile `{profile}`):** trained and evaluated: {', '.join(trained)}; the other "
    f"{len(grid) - len(trained)} rows of the table: paper values and parameter counts only. "
    f"Training settings: {settings.describe()}."))

# %%
rows = ex.run_grid(ctx, grid, settings, trained)

# %% [markdown]
# ## What each option costs
# Parameters (M) and GFLOPs at 256x256 of the row's options on the paper's model (ResNet34,
# [3,4,6,3]), the model of the paper's table (not the smaller model this profile trains).

# %%
costs = pd.DataFrame([{"row": r["label"], "trained here": r["trained"], "params (M)": round(r["params_m_256"], 2),
                       "GFLOPs": round(r["flops_g_256"], 2)} for r in rows]).drop_duplicates("row").set_index("row")
ex.for_display(costs, caption="Parameters and GFLOPs at 256x256 of each row's options on the paper's model "
                              "(ResNet34, [3,4,6,3]).", digits=2)

# %% [markdown]
# ## Ours beside the paper's LSS table (percent)
# Paper: MVTec-AD, ResNet34 [3,4,6,3], ImageNet weights, release evaluation.

# %%
paper = {ex.lss_row_label(r): r for r in ex.paper_rows("lss_design")}
table = ex.ours_vs_paper(rows, paper, keys=("i_auroc", "p_auroc", "p_aupro"))
ex.for_display(table, caption=f"Metrics (%): ours ({profile}, mean over {len(ctx.seeds)} seed(s)) beside the "
                              "paper's LSS table.")

# %%
shown = table.loc[trained]
viz.save_figure(viz.plot_ours_vs_paper(
    trained, list(shown[("p_aupro", "ours (ader)")]), list(shown[("p_aupro", "paper")]), "pixel AU-PRO (%)",
    f"AU-PRO per LSS design: ours ({profile}, ader protocol) vs paper", ours_name=f"ours ({profile})"),
    ctx.figures / "aupro_bars.png")

# %% [markdown]
# ## Over seeds, and the loss curves
# Mean ± standard deviation over the seeds (percent, standard protocol). With the demo's
# base depths, `G3 conv1x1+dw 5,7` is the base model of chapters 01-05 and 07 (one run per seed).

# %%
trained_only = [r for r in rows if r["trained"]]
ex.for_display(ex.seed_table(trained_only, ex.SEED_KEYS),
               caption=f"Trained rows (%), mean ± std over {len(ctx.seeds)} seed(s), standard protocol.")

# %%
viz.save_figure(viz.plot_loss_curves(trained_only, f"training loss ({profile} profile)"), ctx.figures / "loss.png")

# %%
summary = ctx.write_summary({"settings": settings.describe(), "trained_rows": trained, "rows": rows})
print(f"summary written to {summary}")

# %% [markdown]
# ## What we found

# %%
final = "G3 conv1x1+dw 5,7"
best_paper = max(paper, key=lambda label: paper[label]["p_aupro"])
cost_of = {r["label"]: r for r in rows}
stats = ex.seed_stats(rows, "ader.p_aupro")
aupro = ex.seed_stats(rows, "standard.p_aupro")
sentences = [
    f"In the paper's LSS table the final design ({final}) reaches {paper[final]['i_auroc']:.1f} image AUROC and "
    f"{paper[final]['p_aupro']:.1f} AU-PRO; the best AU-PRO is {best_paper}'s ({paper[best_paper]['p_aupro']:.1f}); "
    f"the rows span {min(r['i_auroc'] for r in paper.values()):.1f}-{max(r['i_auroc'] for r in paper.values()):.1f} "
    "image AUROC.",
    f"On the paper's model the options cost {min(r['params_m_256'] for r in rows):.2f}-"
    f"{max(r['params_m_256'] for r in rows):.2f} M parameters ({final}: {cost_of[final]['params_m_256']:.2f} M).",
    ex.best_row_sentence(stats, "pixel AU-PRO (ader)"),
    ex.comparison_sentence(aupro, final, "G3 dw 5,7", "Pixel AU-PRO (standard)") + " The two rows differ only in "
    "the 1x1 convolution before the local depthwise branches." if final in aupro and "G3 dw 5,7" in aupro else None,
    ex.plateau_sentence(rows),
    ex.chance_sentence(ex.seed_stats(rows, "ader.i_auroc"), "image AUROC", settings.describe()),
    ex.provenance_sentence(rows),
]
display(Markdown(ex.findings(sentences)))

# %% [markdown]
# ## Try it yourself
# - Train `G3 conv1x1+dw 1,3` against `G3 conv1x1+dw 5,7`: larger kernels see more context;
#   which defect types gain (compare the per-class tables in the results files)?
# - Remove the local branches entirely with a custom row
#   `{"label": "no local", "local_kernels": []}`: the LSS is then a pure Mamba block.
# - `demo_depths = [2, 2, 2, 2]` and `"G1 conv1x1+dw 5,7"` in `trained_rows["demo"]`: with two
#   blocks per stage the HSS rule matters; with the demo's one block, why do G1 and G3 train
#   identical models?
