"""VDSR: Very Deep Super-Resolution network (Kim et al., CVPR 2016)."""

from torch import nn


class ConvReLU(nn.Module):
    """Bias-free 3x3 convolution followed by ReLU."""

    def __init__(self, num_feat: int):
        super().__init__()
        self.conv = nn.Conv2d(num_feat, num_feat, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


class VDSR(nn.Module):
    """VDSR on the luminance of the bicubic-upsampled LR image.

    Input and output: Y channel in [0, 1], shape (N, 1, H, W), same size (the
    network does not change resolution). `scale` is recorded only: the
    pretrained model is shared by all scales.
    """

    def __init__(self, scale: int = 2, num_feat: int = 64, num_layers: int = 20, num_channels: int = 1):
        super().__init__()
        self.scale = scale
        self.input = nn.Conv2d(num_channels, num_feat, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.residual_layer = nn.Sequential(*[ConvReLU(num_feat) for _ in range(num_layers - 2)])
        self.output = nn.Conv2d(num_feat, num_channels, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.relu(self.input(x))
        out = self.residual_layer(out)
        return self.output(out) + x
