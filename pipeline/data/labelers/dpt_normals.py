"""DPT with a surface-normal head, the model behind 4M-21's `normal` pseudo-labels.

transformers has no normals model. Omnidata's normals network, which 4M-21 labels with, is MiDaS's DPT built with
`num_channels=3`: the backbone, neck and head of DPT depth estimation, the head's last 1x1 convolution giving three
channels instead of one, followed by the same ReLU; it is trained to output (n + 1) / 2, in [0, 1]. This class is
exactly that, under DPTForDepthEstimation's module names, so a converted Omnidata normals checkpoint loads with
`from_pretrained` the way a converted depth checkpoint does. Its output is still named `predicted_depth`
(shape (N, 3, H, W)): the forward pass is DPT depth estimation's, unchanged.
"""

from __future__ import annotations

from torch import nn
from transformers import DPTConfig, DPTForDepthEstimation

NORMAL_CHANNELS = 3
FINAL_CONV = 4  # index of the 1-channel output convolution in DPTDepthEstimationHead.head


class DPTForSurfaceNormals(DPTForDepthEstimation):
    def __init__(self, config: DPTConfig):
        super().__init__(config)
        output = self.head.head[FINAL_CONV]
        if not (isinstance(output, nn.Conv2d) and output.out_channels == 1):  # transformers changed the head
            raise TypeError(f"unexpected DPT depth head layout: {self.head.head}")
        self.head.head[FINAL_CONV] = nn.Conv2d(output.in_channels, NORMAL_CHANNELS, kernel_size=1)
