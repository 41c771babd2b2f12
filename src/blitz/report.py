"""Pictures of a run: the seed's image grids with labels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

PAD = 2


def save_image_grid(
    images: torch.Tensor, captions: list[str], path: Path, per_row: int = 8
) -> None:
    """Rows of ``make_grid`` over uint8 images (N, C, H, W), each image captioned, as a PNG."""
    per_row = min(per_row, len(images))
    rows = -(-len(images) // per_row)
    fig, axes = plt.subplots(rows, 1, figsize=(per_row * 1.3, rows * 1.55), squeeze=False)
    for r, ax in enumerate(axes[:, 0]):
        chunk = images[r * per_row : (r + 1) * per_row].cpu()
        grid = make_grid(chunk, nrow=per_row, padding=PAD, pad_value=255)
        ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", interpolation="nearest")
        cell = images.shape[3] + PAD
        ax.set_xticks([PAD / 2 + cell * (i + 0.5) for i in range(len(chunk))])
        ax.set_xticklabels(captions[r * per_row : (r + 1) * per_row], fontsize=8)
        ax.set_yticks([])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
