"""The seed's network: LeNet-style, for 32x32 inputs with any number of channels."""

import torch
import torch.nn.functional as F
from torch import nn

from blitz.models import register_model


class Net(nn.Module):
    """Exactly the seed's ``Net``: conv 6@5x5, pool, conv 16@5x5, pool, fc 400-120-84-classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))  # (B, 6, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 16, 5, 5)
        x = torch.flatten(x, 1)  # (B, 400)
        x = F.relu(self.fc1(x))  # (B, 120)
        x = F.relu(self.fc2(x))  # (B, 84)
        return self.fc3(x)  # (B, num_classes)


@register_model
def lenet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The seed's network: reproduces the tutorial and is the baseline to beat (built for 32x32).

    Its linear layers fix the input size: 32x32 (up to 35x35, which pools to the same)."""
    return Net(num_classes, in_channels)
