"""Export a trained run for use outside blitz: ONNX or TorchScript, normalisation included,
checked against PyTorch on random images before it is called done."""

from __future__ import annotations

import copy
import inspect
import io
import math
import warnings
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from blitz.config.checks import format_size
from blitz.data.images import RESIZE, RESIZE_FILTER
from blitz.data.preprocess import normalize
from blitz.errors import BlitzError
from blitz.training.checkpoint import ModelFacts
from blitz.training.evaluate import tta_logits
from blitz.training.rundir import check_output
from blitz.utils.writes import write_atomic, write_json
from blitz.version import __version__

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4  # max abs difference of logits between the export and PyTorch
CHECK_BATCH = 5  # differs from the traced batch of 2, so a fixed batch size would show
# the layers' outputs an export may hold for its CHECK_BATCH images (tracing keeps them for
# the backward pass it never runs): a checkpoint that says 4096 x 4096 needs tens of GB
EXPORT_MEMORY = 4 * 2**30


class Deployable(nn.Module):
    """The model with the seed's Normalize inside, the run's test-time views (its logits
    averaged over them, as the run was scored) and its temperature (the logits divided by it,
    so that their softmax gives the calibrated probabilities ``blitz predict`` prints). Input:
    uint8 images (N, C, H, W), values 0-255, RGB (or grey for 1 channel), at the run's image
    size. Output: logits (N, classes)."""

    def __init__(self, model: nn.Module, facts: ModelFacts) -> None:
        super().__init__()
        self.model, self.mean, self.std, self.tta = model, facts.mean, facts.std, facts.tta
        self.temperature = facts.temperature
        self.eval()

    def train(self, mode: bool = True) -> Deployable:
        # Inference only, whatever is asked: torch.onnx.export switches to eval and back with
        # train(), and back to training would make batch norm use the batch's statistics.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = tta_logits(self.model, normalize(images, self.mean, self.std), self.tta)
        return logits / self.temperature  # (N, classes)


def default_path(run_dir: Path, fmt: str) -> Path:
    """``RUN_DIR/model.onnx`` or ``RUN_DIR/model.torchscript.pt``."""
    return run_dir / f"model{FORMATS[fmt]}"


def description_path(export: Path) -> Path:
    """The JSON beside an export that says how to feed it: ``model.onnx.json``."""
    return export.with_name(export.name + ".json")


def preprocessing(facts: ModelFacts) -> dict[str, Any]:
    """How blitz turns an image file into the model's input, and what the model does with it
    (predict, serve's /info and an export's description say the same: this)."""
    size = facts.image_size
    return {
        "decode": "EXIF orientation applied; 16-bit and float images scaled to 8 bits",
        "mode": facts.image_mode,
        "jpeg_draft": "a JPEG much larger than the size decodes at 1/2, 1/4 or 1/8 scale "
        "(PIL Image.draft(mode, (size, size)))",
        "resize": RESIZE,
        "resize_filter": RESIZE_FILTER.name.lower(),
        "image_size": [size, size],
        "normalization": {"mean": list(facts.mean), "std": list(facts.std)},
        "test_time_views": facts.tta,
    }


def description(facts: ModelFacts, fmt: str) -> dict[str, Any]:
    """What a user of an export needs besides the file (written beside it as JSON)."""
    size = facts.image_size
    return {
        "format": fmt,
        "blitz_version": __version__,
        "classes": facts.classes,
        "input": {
            "name": "images",
            "layout": "NCHW",
            "dtype": "uint8",
            "shape": ["batch", facts.in_channels, size, size],
            "value_range": [0, 255],
            "mode": facts.image_mode,  # PIL's: "RGB", or "L" for grey
        },
        "output": {
            "name": "logits",
            "shape": ["batch", len(facts.classes)],
            "probabilities": "sigmoid of each logit (one probability per class)"
            if facts.multi_label
            else "softmax of the logits",
        },  # fmt: skip
        "preprocessing": preprocessing(facts),
        "inside_the_model": ["normalization", "test_time_views"],
        **_task(facts),
    }


def _task(facts: ModelFacts) -> dict[str, Any]:
    """A multi-label model's answer: each class's sigmoid, and the labels over their thresholds."""
    if not facts.multi_label:
        return {"task": facts.task}
    return {
        "task": facts.task,
        "thresholds": dict(zip(facts.classes, facts.thresholds or (0.5,) * len(facts.classes))),
        "labels": "every class whose probability is at least its threshold",
    }


def export_model(facts: ModelFacts, model: nn.Module, fmt: str, out: Path) -> float:
    """Write the export to ``out`` and its description beside it (``description_path``);
    returns its max abs difference to PyTorch (fails above ``TOLERANCE``, or if either gives
    a NaN or infinite logit)."""
    check_output(out, f"the {fmt} export")
    check_output(description_path(out), f"the {fmt} export's description")
    if fmt == "onnx":
        _require_onnx()  # before the export, which needs the onnx package too
    wrapper = Deployable(model.cpu(), facts)
    check_export_memory(wrapper, facts)
    images = random_images(facts, CHECK_BATCH, seed=1)
    with torch.inference_mode():  # the reference, before any exporter touches the model
        expected = wrapper(images)
    _write_export(wrapper, random_images(facts, 2, seed=0), fmt, out)
    diff = _check_export(fmt, out, run_export(fmt, out, images), expected)
    write_json(description_path(out), description(facts, fmt))
    return diff


def check_export_memory(wrapper: nn.Module, facts: ModelFacts) -> None:
    """Refuse, before any image is made, an export whose layers' outputs would pass
    EXPORT_MEMORY (the OOM killer would end it otherwise)."""
    need = CHECK_BATCH * activation_bytes(wrapper, facts)
    if need > EXPORT_MEMORY:
        size = facts.image_size
        raise BlitzError(
            f"exporting this {facts.name} at its image size {size}x{size} needs about "
            f"{format_size(need)} for its layers' outputs on {CHECK_BATCH} images, more than the "
            f"{format_size(EXPORT_MEMORY)} an export may take: export a run trained at a smaller "
            "--image-size"
        )


def activation_bytes(module: nn.Module, facts: ModelFacts) -> int:
    """Bytes of every layer's output for one image of the run's size, on the meta device:
    shapes only, nothing is allocated."""
    meta = copy.deepcopy(module).to("meta")
    sizes: list[int] = []

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    for layer in meta.modules():
        layer.register_forward_hook(count)
    side = facts.image_size
    image = torch.empty(1, facts.in_channels, side, side, dtype=torch.uint8, device="meta")
    with torch.no_grad():
        meta(image)
    return sum(sizes)


def _write_export(wrapper: nn.Module, example: torch.Tensor, fmt: str, out: Path) -> None:
    with warnings.catch_warnings():  # both exporters warn that newer ones exist; they work here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # constants: what we want
        # the test-time shifts' slices are left to the runtime: the check below still compares
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        buf = io.BytesIO()  # then written whole, never through a link (outputs.write_atomic)
        if fmt == "onnx":
            _export_onnx(wrapper, example, buf)
        else:
            torch.jit.save(torch.jit.trace(wrapper, example), buf)
    write_atomic(out, buf.getvalue())


def _check_export(fmt: str, out: Path, got: torch.Tensor, expected: torch.Tensor) -> float:
    if not expected.isfinite().all():
        raise BlitzError(
            f"the model gives NaN or infinite logits on random images, so the {fmt} export in "
            f"{out} cannot be checked: its weights are broken (a run that diverged?); export "
            "a run that trained to a finite loss"
        )
    if got.shape != expected.shape:
        how = f"in shape: logits {tuple(got.shape)} instead of {tuple(expected.shape)}"
    else:
        diff = (got - expected).abs().max().item()
        if diff <= TOLERANCE:  # False for NaN, as it should be
            return diff
        finite = math.isfinite(diff)
        how = f"by {diff:.2e} (> {TOLERANCE})" if finite else "with NaN or infinite logits"
    raise BlitzError(
        f"the {fmt} export in {out} differs from PyTorch {how}: "
        "try the other --format, or report this with the model name"
    )


def random_images(facts: ModelFacts, count: int, seed: int) -> torch.Tensor:
    """uint8 (count, C, S, S) noise in the run's input shape."""
    shape = (count, facts.in_channels, facts.image_size, facts.image_size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, out: IO[bytes]) -> None:
    # The TorchScript-based exporter (dynamo=False) needs no onnxscript and exists from torch
    # 2.4 to 2.14 at least; older versions have no `dynamo` argument and use it anyway.
    legacy: dict[str, Any] = (
        {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    )
    torch.onnx.export(
        wrapper,
        (example,),
        out,  # type: ignore[arg-type]  # torch's stub says a path; the legacy exporter takes a file
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        **legacy,
    )


def run_export(fmt: str, path: Path, images: torch.Tensor) -> torch.Tensor:
    """Logits from an exported file, with its own runtime (onnxruntime or torch.jit)."""
    if fmt == "torchscript":
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
            return torch.jit.load(str(path))(images)
    session = _onnx_session(path)
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def _onnx_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BlitzError(
            "--format onnx needs onnx and onnxruntime: pip install onnx onnxruntime "
            "(or use --format torchscript)"
        ) from None
