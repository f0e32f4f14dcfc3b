"""FSRCNN: Fast Super-Resolution CNN (Dong et al., ECCV 2016)."""

from torch import nn


class FSRCNN(nn.Module):
    """FSRCNN(d, s, m) with PReLU and a 9x9 transposed-conv upsampler.

    Input and output: Y channel in [0, 1], shape (N, 1, H, W) -> (N, 1, sH, sW).
    """

    def __init__(self, scale: int = 2, num_channels: int = 1, d: int = 56, s: int = 12, m: int = 4):
        super().__init__()
        self.scale = scale
        self.first_part = nn.Sequential(nn.Conv2d(num_channels, d, 5, padding=2), nn.PReLU(d))
        mid = [nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        mid += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(
            d, num_channels, 9, stride=scale, padding=4, output_padding=scale - 1
        )

    def forward(self, x):
        return self.last_part(self.mid_part(self.first_part(x)))
