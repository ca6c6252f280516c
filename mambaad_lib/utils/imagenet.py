"""ImageNet normalisation statistics: the input convention of every pretrained encoder here.

Images enter the models as ``(x - IMAGENET_MEAN) / IMAGENET_STD`` per RGB channel
(torchvision's and timm's ImageNet weights were trained on that). Datasets normalise with
them (:mod:`mambaad_lib.data.transforms`) and anomaly synthesis undoes them to paste
textures in pixel space (:mod:`mambaad_lib.synthesis.las`).
"""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
