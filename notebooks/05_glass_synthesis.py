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
# # Anomaly synthesis: GLASS's LAS and GAS, and LAS for MambaAD
#
# **The paper** (GLASS: [arXiv:2407.09359](https://arxiv.org/abs/2407.09359); MambaAD, the
# method it is compared with: [arXiv:2404.06564](https://arxiv.org/abs/2404.06564), Sec. 4.2).
# GLASS trains a discriminator on normal features against two kinds of
# synthetic anomalies: *LAS* (local anomaly synthesis) pastes Perlin-shaped blobs of a
# foreign, augmented texture into the image; *GAS* (global anomaly synthesis) pushes normal
# features outwards by gradient ascent on the discriminator, into a band around the normal
# set. MambaAD needs no synthetic anomalies: it reconstructs encoder features.
#
# **What this notebook does.** It shows LAS images and the feature-space picture of GAS,
# then compares, per defect type of the synthetic benchmark, GLASS (one model per class),
# a nearest-neighbour patch baseline (one memory bank per class), MambaAD (one unified
# model) and MambaAD trained with LAS on its input path (reconstruct clean features from
# corrupted images).
#
# **What to look for.** LAS imitates region/texture-like defects (hole, stain, patch), not
# thin or structural ones (scratch, crack, cut): does GLASS's advantage, if any, sit in
# the first group?

# %% tags=["parameters"]
profile = "smoke"            # smoke | demo | paper
dataset_root = "data"
dataset_name = "synthetic"
device = "cpu"
seeds = None                 # None: the profile's seeds (smoke [0], demo and paper [0, 1, 2])
results_root = "results"
runs_root = "runs"
# Methods compared: label -> engine method (GLASS and the baseline train one model per class)
methods = {"GLASS": "glass", "nearest neighbour": "nearest_neighbor", "MambaAD": "mambaad",
           "MambaAD + LAS": "mambaad_las"}
las_classes = None                # classes shown in the LAS figure (None: the first two)

# %%
from mambaad_lib import experiments as ex
from mambaad_lib import viz

ctx = ex.Context.from_parameters("05_glass_synthesis", globals())
settings = ex.training_settings("synthesis", profile)

# %%
import pandas as pd
from IPython.display import Markdown, display

from mambaad_lib.data import AnomalyDataset
from mambaad_lib.synthesis.las import build_las

ctx.ensure_dataset()
# MambaAD rows take the notebook's schedule and base model; GLASS and the baseline keep their
# own profile's (model and schedule of that size) and share the data.
own_schedule = ("glass", "nearest_neighbor")
display(Markdown(
    f"**Run here (profile `{profile}`):** {', '.join(methods)} on `{dataset_name}`: {settings.describe()}. "
    "GLASS and the nearest-neighbour baseline keep the model options and schedule of their own profiles of "
    f"this size (`mambaad train --profile {profile} --model glass`: random ResNet18 features offline)."))

# %% [markdown]
# ## LAS: what the synthetic defects look like
# Original image, the Perlin mask (restricted to the estimated foreground), the augmented
# texture, and the blend.

# %%
train_images = AnomalyDataset(dataset_root, dataset_name, "train", image_size=settings.image_size,
                              crop_size=settings.image_size)
examples = viz.las_examples(train_images, build_las(None), las_classes or train_images.classes[:2], seed=ctx.seeds[0])
viz.save_figure(viz.plot_las_examples(examples), ctx.figures / "las_examples.png")

# %% [markdown]
# ## Train every method

# %%
runs = {(label, seed): ex.run_row(ctx.config(method, settings, seed=seed, schedule=method not in own_schedule,
                                               architecture=method not in own_schedule), label)
        for label, method in methods.items() for seed in ctx.seeds}
records = {label: [ex.read_record(runs[label, seed]["results_file"]) for seed in ctx.seeds] for label in methods}
means = pd.DataFrame({label: {key: ex.pct(value) for key, value in ex.method_means(records[label]).items()}
                      for label in methods}).T
means.index.name = "method"
ex.for_display(means, caption=f"Class means (%), standard protocol, mean over {len(ctx.seeds)} seed(s).")

# %% [markdown]
# ## Over seeds, and the loss curves
# Mean ± standard deviation over the seeds (percent, standard protocol). GLASS trains one
# model per class: its curve is the mean over the class models, and it counts as plateaued
# when every class model did. The nearest-neighbour baseline trains nothing (no curve).

# %%
run_rows = list(runs.values())
ex.for_display(ex.seed_table(run_rows, ex.SEED_KEYS),
               caption=f"Mean ± std over {len(ctx.seeds)} seed(s) (%), standard protocol.")

# %%
viz.save_figure(viz.plot_loss_curves(run_rows, f"training loss ({profile} profile)"), ctx.figures / "loss.png")

# %% [markdown]
# ## GAS: where the synthetic features sit
# Adapted patch features of a few normal training images (first class), the GAS features
# the trained discriminator's gradient ascent makes from them, and the features of LAS
# patches inside synthetic defects, on the two principal axes of the normal set. The legend
# of the table below gives the discriminator's mean output per set (1 = anomalous).

# %%
if "GLASS" in methods:
    projection = ex.gas_projection(runs["GLASS", ctx.seeds[0]]["results_file"], seed=ctx.seeds[0])
    display(ex.for_display(pd.Series(projection["scores"], name="mean discriminator output").to_frame(),
                           caption="The trained discriminator's mean output per feature set (1 = anomalous).",
                           digits=3))
    display(viz.save_figure(viz.plot_feature_projection(projection["points"], "GLASS feature space"),
                            ctx.figures / "gas_projection.png"))
else:
    projection = None
    print("GLASS is not among the compared methods")

# %% [markdown]
# ## Per defect type
# Image and pixel AUROC for each defect type (normal test images of a class against its
# images of that type, averaged over classes), and the two groups: LAS-like and thin or
# structural defects.

# %%
comparison = ex.defect_type_comparison({label: runs[label, ctx.seeds[0]]["results_file"] for label in methods},
                                       ctx.figures / "defect_types.json")
per_type = ex.defect_type_table(comparison)
ex.for_display(per_type, caption="AUROC (%) per defect type, first seed, mean over classes.")

# %%
groups = ex.defect_group_table(comparison)
ex.for_display(groups, caption="AUROC (%) of the LAS-like and the thin/structural defect groups, first seed.")

# %%
types = list(per_type.index)
viz.save_figure(viz.plot_grouped_bars(
    types, {label: [per_type.loc[t, (label, "image AUROC")] for t in types] for label in methods},
    "image AUROC (%)", f"image AUROC per defect type ({profile} profile)"), ctx.figures / "defect_types.png")

# %%
summary = ctx.write_summary({
    "settings": settings.describe(), "methods": list(methods), "runs": list(runs.values()),
    "means": means.reset_index().to_dict("records"), "per_defect_type": comparison,
    "gas_projection_scores": projection["scores"] if projection else None})
print(f"summary written to {summary}")

# %% [markdown]
# ## What we found

# %%
stats = ex.seed_stats(run_rows, "standard.i_auroc")
pixel = ex.seed_stats(run_rows, "standard.p_auroc")
group_gaps = []
for label, entry in comparison["methods"].items():
    by_kind = {group["las_like"]: group["i_auroc"] for group in entry["groups"]}
    if True in by_kind and False in by_kind:
        group_gaps.append(f"{label} {100 * by_kind[True]:.1f} vs {100 * by_kind[False]:.1f}")
sentences = [
    ex.best_row_sentence(stats, "image AUROC (standard)"),
    ex.best_row_sentence(pixel, "pixel AUROC (standard)"),
    *(ex.comparison_sentence(values, label, "nearest neighbour", name) for name, values in
      (("Image AUROC (standard)", stats), ("Pixel AUROC (standard)", pixel))
      for label in ("MambaAD", "GLASS") if label in values and "nearest neighbour" in values),
    ex.plateau_sentence(run_rows),
    ("Image AUROC on region/texture-like vs thin/structural defects (first seed): " + "; ".join(group_gaps) + ".")
    if group_gaps else None,
    ex.chance_sentence(stats, "image AUROC", settings.describe() + "; GLASS and the baseline: their own profiles"),
    ex.provenance_sentence(run_rows),
]
display(Markdown(ex.findings(sentences)))

# %% [markdown]
# ## Try it yourself
# - `las_classes = ["grass", "logo"]` (synthetic benchmark) and rerun the first figure: where does the
#   foreground estimate confine the defects on an object class?
# - Give LAS real textures: download DTD once and pass `model={"texture_dir": "/path/to/dtd"}`
#   to the GLASS rows; do the synthetic defects look more like the real ones?
# - Compare `MambaAD` and `MambaAD + LAS` on the thin/structural group: does learning to
#   undo blobs help with scratches?
