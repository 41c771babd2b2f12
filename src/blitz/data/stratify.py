"""Splitting multi-label images into sets so that each set has every label where it can:
iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011; what scikit-multilearn's
``IterativeStratification`` does), reproducibly from a seed. Rarest labels are placed first,
each image to the set that still wants that label most."""

from __future__ import annotations

import torch

ROLES = ("train", "val", "test")


def stratified_rows(
    labels: torch.Tensor, fractions: dict[str, float], seed: int
) -> dict[str, torch.Tensor]:
    """Rows (sorted) per role of multi-hot ``labels`` (N, K): ``fractions`` of the images for
    "val" and "test" (at least one image for a fraction above 0), the rest for "train"."""
    hot = labels.cpu().bool()
    n = len(hot)
    sizes = {role: max(round(n * f), 1) if f else 0 for role, f in fractions.items()}
    share = torch.tensor([1 - sum(fractions.values()), *(fractions[r] for r in ROLES[1:])])
    capacity = torch.tensor([n - sum(sizes.values()), *(sizes[r] for r in ROLES[1:])]).double()
    wanted = share[:, None].double() * hot.sum(0).double()[None, :]  # (3, K) images to place
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    hot, placed = hot[order], torch.full((n,), -1)
    left = hot.clone()
    while left.any():
        counts = left.sum(0)
        label = int(torch.where(counts > 0, counts, n + 1).argmin())  # the rarest label left
        for row in torch.nonzero(left[:, label])[:, 0].tolist():
            # the set that wants the label most; ties: more room left, then train first
            key = wanted[:, label] + 1e-9 * capacity
            key[capacity <= 0] = -torch.inf  # a full set takes no more
            role = int(key.argmax())
            placed[row] = role
            wanted[role] -= hot[row].double()
            capacity[role] -= 1
            left[row] = False
    for row in torch.nonzero(placed < 0)[:, 0].tolist():  # images with no label: fill the room
        role = int(capacity.argmax())
        placed[row] = role
        capacity[role] -= 1
    return {role: torch.sort(order[placed == i]).values for i, role in enumerate(ROLES)}


def lacking_labels(labels: torch.Tensor, rows: torch.Tensor) -> list[int]:
    """The labels none of ``rows`` has."""
    if not len(rows):
        return []
    return torch.nonzero(labels.cpu()[rows].sum(0) == 0)[:, 0].tolist()
