"""Feature Pyramid Network producing P3-P7 from C3-C5 (Lin et al., "Feature Pyramid Networks", 2017).

    P5 = conv3x3(L5),  L5 = conv1x1(C5)
    P4 = conv3x3(L4),  L4 = conv1x1(C4) + up2(L5)
    P3 = conv3x3(L3),  L3 = conv1x1(C3) + up2(L4)
    P6 = conv3x3/2(S),  S = C5, P5 or L5 (``p6_from``: c5, p5, lateral_p5)
    P7 = conv3x3/2(relu(P6)), or conv3x3/2(P6) with ``relu_before_p7=False``

P6 from C5 is the RetinaNet paper's choice (and torchvision's RetinaNet v2); P6 from P5 is torchvision's
RetinaNet v1, FCOS and GFL choice. P6 from L5, the 1x1 lateral of C5 at the top of the top-down path (before
the 3x3 conv that makes P5), with no ReLU before P7, is the FPN of the official EFL code (United-Perception /
EOD ``FPN(downsample="conv")``, whose extra levels start from the last lateral and are plain stride-2 convs).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

P6_SOURCES = ("c5", "p5", "lateral_p5")


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int, norm: str | None) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=norm is None)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if norm is None:
        return conv
    if norm == "gn":
        return nn.Sequential(conv, nn.GroupNorm(32, out_channels))
    raise ValueError(f"unknown FPN norm {norm!r}; choose null or gn")


class FPN(nn.Module):
    """Top-down FPN over [C3, C4, C5] with two extra levels; returns [P3, P4, P5, P6, P7]."""

    def __init__(self, in_channels: list[int], out_channels: int = 256, p6_from: str = "c5",
                 norm: str | None = None, relu_before_p7: bool = True):
        super().__init__()
        if p6_from not in P6_SOURCES:
            raise ValueError(f"p6_from must be one of {P6_SOURCES}, got {p6_from!r}")
        self.lateral_convs = nn.ModuleList(_conv(c, out_channels, 1, 1, norm) for c in in_channels)
        self.output_convs = nn.ModuleList(_conv(out_channels, out_channels, 3, 1, norm) for _ in in_channels)
        self.p6_from = p6_from
        self.relu_before_p7 = relu_before_p7
        self.p6 = _conv(in_channels[-1] if p6_from == "c5" else out_channels, out_channels, 3, 2, norm)
        self.p7 = _conv(out_channels, out_channels, 3, 2, norm)
        self.out_channels = out_channels
        self.num_levels = len(in_channels) + 2

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse to fine (the top lateral, L5, stays as is)
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outputs = [conv(lat) for conv, lat in zip(self.output_convs, laterals)]
        p6_source = {"c5": features[-1], "p5": outputs[-1], "lateral_p5": laterals[-1]}[self.p6_from]
        p6 = self.p6(p6_source)
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return outputs + [p6, p7]
