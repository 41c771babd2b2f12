"""Grad-CAM (Selvaraju et al. 2017) through the ``grad-cam`` package: where in an image the
evidence for a class lies, as a heat map over it. Images are decoded and classified by the
functions ``blitz predict`` uses; the heat map is of the plain network (no test-time views)."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from blitz.data.preprocess import normalize
from blitz.errors import BlitzError, did_you_mean
from blitz.models.timm_models import PREFIX
from blitz.outputs.predict import (
    OnSkip,
    _decode_files,
    _report_skip,
    classify,
    for_terminal,
    printable,
)
from blitz.training.checkpoint import ModelFacts
from blitz.utils.writes import write_atomic

INSTALL = "pip install 'blitz[explain]' (the grad-cam package)"
MIN_SIDE = 128  # overlays of small images are scaled up (whole pixels) to at least this side
NAME_CHARS = 40  # of an image's or class's name in a file name
CHUNK = 32  # images explained at a time
Name = TypeVar("Name", Path, int)

# The layer whose activations Grad-CAM weighs, per family: the last one that still has a
# spatial map (after it, global pooling). timm's models name their last stage in feature_info.
TARGETS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "lenet": lambda m: m.get_submodule("conv2"),  # (B, 16, 10, 10): then pooling and linear
    "convnet": lambda m: m.get_submodule("features"),  # the last block, before global max-pool
    # the last conv group, before the global max-pool
    "airbench": lambda m: list(m.get_submodule("layers").children())[-2],
}


def require_grad_cam() -> ModuleType:
    """The ``pytorch_grad_cam`` module, or a BlitzError saying how to install it."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise BlitzError(f"Grad-CAM needs the grad-cam package: {INSTALL}") from None
    return pytorch_grad_cam


def target_layer(model: nn.Module, name: str, in_channels: int = 3, side: int = 64) -> nn.Module:
    """The layer to explain ``model`` (of the registry's ``name``, taking images of
    ``in_channels`` x ``side`` x ``side``) at."""
    if name in TARGETS:
        return TARGETS[name](model)
    info = getattr(model, "feature_info", None)
    if name.startswith(PREFIX) and info:
        return model.get_submodule(info[-1]["module"])
    return _last_spatial_layer(model, in_channels, side)


def _last_spatial_layer(model: nn.Module, in_channels: int = 3, side: int = 64) -> nn.Module:
    """A model the table does not know: its last module (in the order they run) whose output
    is a (B, C, H, W) map larger than 1 x 1, found on one blank image."""
    found: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(
            lambda mod, _in, out: (
                found.append(mod)
                if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 1
                else None
            )
        )
        for m in model.modules()
        if m is not model
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, side, side))
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        raise BlitzError("Grad-CAM needs a convolutional network: this model has no spatial layer")
    return found[-1]


def heat_maps(
    model: nn.Module, facts: ModelFacts, images: torch.Tensor, targets: list[int]
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of uint8 images (N, C, H, W) at the run's size, each
    for the class ``targets[i]``."""
    cam_module = require_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = model.cpu().eval()
    layer = target_layer(model, facts.name, facts.in_channels, facts.image_size)
    x = normalize(images, facts.mean, facts.std).float()
    wanted = [ClassifierOutputTarget(t) for t in targets]
    try:
        with torch.enable_grad(), cam_module.GradCAM(model=model, target_layers=[layer]) as cam:
            return cam(input_tensor=x, targets=wanted)
    except (ValueError, IndexError, RuntimeError) as exc:  # a layer without a spatial map
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BlitzError(
            f"Grad-CAM cannot explain {facts.name} at its layer {type(layer).__name__} "
            f"({first}): it needs a convolutional network"
        ) from None


def overlay(image: torch.Tensor, heat: np.ndarray) -> np.ndarray:
    """A uint8 image (C, H, W) with its heat map (H, W) blended over it, as (H', W', 3) RGB,
    scaled up by a whole factor to at least MIN_SIDE pixels a side."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    pixels = image.permute(1, 2, 0).numpy().astype(np.float32) / 255  # (H, W, C)
    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]
    blended = show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.55)
    scale = max(1, -(-MIN_SIDE // max(blended.shape[:2])))
    return np.kron(blended, np.ones((scale, scale, 1), dtype=np.uint8))  # whole pixels


def overlay_png(image: torch.Tensor, heat: np.ndarray) -> bytes:
    """``overlay`` as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(overlay(image, heat)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Explanation:
    """One image explained: the prediction, the class whose heat map it is, the file written."""

    image: Path | int  # the file, or the image's place among the images passed
    top: list[tuple[str, float]]  # (class, calibrated probability), best first
    explained: str  # the class the heat map is for
    written: Path


def class_index(facts: ModelFacts, name: str | None) -> int | None:
    """The index of ``--class NAME``, or None to explain each image's predicted class."""
    if name is None:
        return None
    if name not in facts.classes:
        shown = ", ".join(map(repr, facts.classes[:20])) + (", ..." * (len(facts.classes) > 20))
        raise BlitzError(
            f"--class {name!r} is not a class of this run{did_you_mean(name, facts.classes)}: "
            f"pass one of {shown}"
        )
    return facts.classes.index(name)


def explain_files(
    facts: ModelFacts,
    model: nn.Module,
    files: list[Path],
    out: Path,
    class_name: str | None = None,
    on_skip: OnSkip | None = None,
) -> list[Explanation]:
    """Heat maps of image files, written as PNGs into ``out``; a file that cannot be read or
    decoded is passed to ``on_skip`` and left out."""
    wanted = class_index(facts, class_name)
    prepare_folder(out)
    done: list[Explanation] = []
    for start in range(0, len(files), CHUNK):  # a backward pass holds every layer's output
        good, arrays = _decode_files(files[start : start + CHUNK], facts, on_skip or _report_skip)
        done += explain_arrays(facts, model, good, arrays, out, wanted, first=start + 1)
    return done


def explain_arrays(
    facts: ModelFacts,
    model: nn.Module,
    names: list[Name],
    arrays: list[np.ndarray],
    out: Path,
    wanted: int | None = None,
    first: int = 1,
) -> list[Explanation]:
    """Decoded images (H, W, C) explained for class ``wanted`` (None: each one's predicted
    class, as ``blitz predict`` gives it), one PNG each in ``out``."""
    if not arrays:
        return []
    predictions = classify(facts, model, names, arrays, top_k=1)
    index = {c: i for i, c in enumerate(facts.classes)}
    targets = [wanted if wanted is not None else index[top[0][0]] for _, top in predictions]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    maps = heat_maps(model, facts, images, targets)
    done = []
    for place, ((name, top), image, heat, target) in enumerate(
        zip(predictions, images, maps, targets), first
    ):
        path = out / file_name(place, name, facts.classes[target])
        write_atomic(path, overlay_png(image, heat))
        done.append(Explanation(name, top, facts.classes[target], path))
    return done


def file_name(place: int, image: Path | int, class_name: str) -> str:
    """``003-cat_photo-dog.png``: the place, the image's name and the class, reduced to letters,
    digits, dots, dashes and underscores (a name never leads out of the folder or hides)."""
    stem = image.stem if isinstance(image, Path) else f"image{image}"
    return f"{place:03d}-{_safe(printable(stem))}-{_safe(class_name)}.png"


def _safe(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:NAME_CHARS].strip("._-")
    return cleaned or "x"


def prepare_folder(out: Path) -> None:
    """``out`` as a folder to write into: made if missing; a file there is an error."""
    if out.exists() and not out.is_dir():
        shown = for_terminal(str(out))
        raise BlitzError(f"--out {shown} is a file: pass a folder for the heat maps")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BlitzError(
            f"cannot make the folder {for_terminal(str(out))} ({exc.strerror or exc}): pass "
            "another --out"
        ) from None


def format_explanation(explanation: Explanation) -> str:
    """``cat.png: cat 97.1 % -> out/001-cat-cat.png (heat map of cat)``."""
    name = explanation.image
    shown = for_terminal(str(name)) if isinstance(name, Path) else f"image {name}"
    top_class, probability = explanation.top[0]
    return (
        f"{shown}: {for_terminal(top_class)} {100 * probability:.1f} % -> "
        f"{for_terminal(str(explanation.written))} "
        f"(heat map of {for_terminal(explanation.explained)})"
    )
