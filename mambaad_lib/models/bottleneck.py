"""MFF_OCE: multi-scale feature fusion (a half FPN) and one-class embedding.

With encoder channels (c1, c2, c3) at strides (4, 8, 16):

    p1 = ReLU(BN(conv3x3/2 c1->c2))(f1)
    p2 = ReLU(BN(conv1x1 c2->c2))(f2) + p1
    p3 = ReLU(BN(conv3x3/2 c2->c3))(p2) + ReLU(BN(conv1x1 c3->c3))(f3)
    p3 = ReLU(BN(conv1x1 c3->c3))(p3)
    out = OCE(p3): 3 ResNet Bottleneck blocks (planes c3/2, expansion 4), the first with
          stride 2 on its 3x3 conv and a downsample branch  ->  (B, 2*c3, H/32, W/32)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bias: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def one_class_embedding(in_channels: int, planes: int, blocks: int = 3) -> nn.Sequential:
    """ResNet Bottleneck blocks; the first halves the resolution: (B, in, H, W) -> (B, 4*planes, H/2, W/2)."""
    out_channels = planes * Bottleneck.expansion
    downsample = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=2, bias=False),
        nn.BatchNorm2d(out_channels),
    )
    layers = [Bottleneck(in_channels, planes, stride=2, downsample=downsample)]
    layers += [Bottleneck(out_channels, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class MFFOCE(nn.Module):
    """Fuse the three encoder scales and embed them into a compact bottleneck map.

    Args:
        channels: encoder channels (c1, c2, c3), e.g. (64, 128, 256) for ResNet34.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = conv_bn_relu(c1, c2, 3, stride=2)  # release: conv1/bn1
        self.lateral2 = conv_bn_relu(c2, c2, 1, bias=True)  # conv21/bn21
        self.down2 = conv_bn_relu(c2, c3, 3, stride=2)  # conv2/bn2
        self.lateral3 = conv_bn_relu(c3, c3, 1, bias=True)  # conv31/bn31
        self.fuse = conv_bn_relu(c3, c3, 1, bias=True)  # convf/bnf
        self.oce = one_class_embedding(c3, planes=c3 // 2)  # bn_layer
        self.out_channels = 2 * c3
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """[f1 (B,c1,H,W), f2 (B,c2,H/2,W/2), f3 (B,c3,H/4,W/4)] -> (B, 2*c3, H/8, W/8)."""
        f1, f2, f3 = features
        p2 = self.lateral2(f2) + self.down1(f1)  # (B, c2, H/2, W/2)
        p3 = self.down2(p2) + self.lateral3(f3)  # (B, c3, H/4, W/4)
        return self.oce(self.fuse(p3))
