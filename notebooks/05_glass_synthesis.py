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
# **The idea.** GLASS trains a discriminator on normal features against two kinds of
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
seed = 0
results_root = "results"
runs_root = "runs"
# Methods compared: label -> (engine method, one model per class?)
methods = {
    "GLASS": ["glass", True],
    "nearest neighbour": ["nearest_neighbor", True],
    "MambaAD": ["mambaad", False],
    "MambaAD + LAS": ["mambaad_las", False],
}
las_classes = None                # classes shown in the LAS figure (None: the first two)

# %%
import pandas as pd
from IPython.display import Markdown, display

from mambaad_lib import experiments as ex
from mambaad_lib import viz
from mambaad_lib.data import AnomalyDataset
from mambaad_lib.methods.per_class import defect_type_comparison
from mambaad_lib.synthesis.las import build_las

NOTEBOOK = "05_glass_synthesis"
settings = ex.training_settings("synthesis", profile)
figures = ex.output_dir(results_root, NOTEBOOK, profile)
ex.ensure_dataset(dataset_root, dataset_name, settings.base_profile)
available = {label: spec for label, spec in methods.items() if ex.method_available(spec[0])}
missing = sorted(set(methods) - set(available))
display(Markdown(
    f"**Run here (profile `{profile}`):** {', '.join(available)} on `{dataset_name}`: {settings.describe()}. "
    "GLASS and the nearest-neighbour baseline keep the model options of their own profiles "
    f"(`configs/glass_{profile}.yaml`, `configs/glass_nearest_neighbor_{profile}.yaml`: random ResNet18 "
    "features offline)." + (f" Not run (method not registered with the engine): {', '.join(missing)}."
                            if missing else "")))

# %% [markdown]
# ## LAS: what the synthetic defects look like
# Original image, the Perlin mask (restricted to the estimated foreground), the augmented
# texture, and the blend.

# %%
train_images = AnomalyDataset(dataset_root, dataset_name, "train", image_size=settings.image_size,
                              crop_size=settings.image_size)
examples = viz.las_examples(train_images, build_las(None), las_classes or train_images.classes[:2], seed=seed)
viz.save_figure(viz.plot_las_examples(examples), figures / "las_examples.png")

# %% [markdown]
# ## Train every method

# %%
outcomes, configs = {}, {}
for label, (method, per_class) in available.items():
    configs[label] = ex.method_config(method, settings, profile, notebook=NOTEBOOK, dataset_root=dataset_root,
                                      dataset_name=dataset_name, device=device, seed=seed,
                                      results_root=results_root, runs_root=runs_root)
    outcomes[label] = ex.train_method(method, configs[label], per_class)
means = pd.DataFrame({label: {key: ex.pct(value) for key, value in ex.method_means(runs).items()}
                      for label, runs in outcomes.items()}).T
means.index.name = "class mean, standard protocol (%)"
means

# %% [markdown]
# ## GAS: where the synthetic features sit
# Adapted patch features of a few normal training images (first class), the GAS features
# the trained discriminator's gradient ascent makes from them, and the features of LAS
# patches inside synthetic defects, on the two principal axes of the normal set. The legend
# of the table below gives the discriminator's mean output per set (1 = anomalous).

# %%
if "GLASS" in outcomes:
    projection = ex.gas_projection(outcomes["GLASS"][0].results_file, seed=seed)
    display(pd.Series(projection["scores"], name="mean discriminator output").to_frame())
    display(viz.save_figure(viz.plot_feature_projection(projection["points"], "GLASS feature space"),
                            figures / "gas_projection.png"))
else:
    projection = None
    print("GLASS is not available here")

# %% [markdown]
# ## Per defect type
# Image and pixel AUROC for each defect type (normal test images of a class against its
# images of that type, averaged over classes), and the two groups: LAS-like and thin or
# structural defects.

# %%
comparison = defect_type_comparison({label: (configs[label], outcomes[label]) for label in outcomes},
                                    figures / "defect_types.json", progress=False)
per_type = ex.defect_type_table(comparison)
per_type

# %%
groups = ex.defect_group_table(comparison)
groups

# %%
types = list(per_type.index)
viz.save_figure(viz.plot_grouped_bars(
    types, {label: [per_type.loc[t, (label, "image AUROC")] for t in types] for label in outcomes},
    "image AUROC (%)", f"image AUROC per defect type ({profile} profile)"), figures / "defect_types.png")

# %%
summary = ex.write_summary(results_root, NOTEBOOK, profile, {
    "settings": settings.describe(), "dataset": dataset_name, "methods": list(outcomes),
    "not_run": missing, "means": means.reset_index().to_dict("records"),
    "per_defect_type": comparison, "gas_projection_scores": projection["scores"] if projection else None,
    "results_files": {label: [str(o.results_file) for o in runs] for label, runs in outcomes.items()}})
print(f"summary written to {summary}")

# %% [markdown]
# ## Try it yourself
# - `las_classes = ["grass", "logo"]` (synthetic benchmark) and rerun the first figure: where does the
#   foreground estimate confine the defects on an object class?
# - Give LAS real textures: download DTD once and set `model.texture_dir` in
#   `configs/glass_demo.yaml`; do the synthetic defects look more like the real ones?
# - Compare `MambaAD` and `MambaAD + LAS` on the thin/structural group: does learning to
#   undo blobs help with scratches?
