"""timm's models (``--model timm:NAME``) with a head for the data's classes and channels, their
own preprocessing, and pretrained weights from a local file (``--pretrained PATH``).

timm is optional: it is imported when a timm model is asked for, never at import time."""

from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import nn

from blitz.config.checks import format_size
from blitz.config.settings import HUB
from blitz.errors import BlitzError

PREFIX = "timm:"
INSTALL = "pip install 'blitz[timm]'"
LISTING = "python -c \"import timm; print(timm.list_models('resnet*'))\""
# float32 weights of a ViT-Large are 1.2 GB: a bigger file is no model to fine-tune on a few
# thousand images, and reading it whole could exhaust memory before any clearer error
MAX_WEIGHTS_BYTES = 2 * 2**30
EXAMPLES = 3  # mismatched tensors named in an error


class Preprocessing(NamedTuple):
    """What a model's pretrained weights expect: the side of its square input, mean and std."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def import_timm() -> ModuleType:
    """The timm package; a BlitzError that says how to install it if it is missing."""
    try:
        import timm
    except ImportError:
        raise BlitzError(
            f"timm models (--model {PREFIX}NAME) need the timm package, which is not "
            f"installed: {INSTALL}"
        ) from None
    return timm


def check_timm_name(arch: str) -> None:
    """A BlitzError naming the closest of timm's models, unless timm has ``arch``
    (``resnet18``, or with a pretrained tag, ``resnet18.a1_in1k``)."""
    names = import_timm().list_models(pretrained="." in arch)
    if arch in names:
        return
    close = difflib.get_close_matches(arch, names, 5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise BlitzError(
        f"timm has no model {arch!r} (--model {PREFIX}{arch}): {hint}list timm's models with "
        f"{LISTING}"
    )


def timm_factory(arch: str) -> Callable[..., nn.Module]:
    """The registry's factory ``(num_classes, in_channels)`` for timm's model ``arch``."""
    check_timm_name(arch)

    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return build_timm(arch, num_classes, in_channels)

    build.__doc__ = f"timm's {arch}, its classifier head sized to the data's classes."
    return build


def build_timm(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """timm's model ``arch`` with fresh weights (nothing is downloaded)."""
    timm = import_timm()
    try:
        return timm.create_model(
            arch, pretrained=False, num_classes=num_classes, in_chans=in_channels
        )
    except (RuntimeError, ValueError, TypeError, AssertionError, NotImplementedError) as exc:
        raise BlitzError(
            f"timm cannot build {arch} for {num_classes} classes and {in_channels}-channel "
            f"images ({_first_line(exc)}): choose another timm model"
        ) from None


def timm_preprocessing(arch: str) -> Preprocessing:
    """The input size, mean and std that timm's ``arch`` was pretrained with."""
    check_timm_name(arch)
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(arch)
    found = resolve_data_config(
        pretrained_cfg=pretrained.to_dict() if pretrained else {"architecture": arch}
    )
    _, height, width = found["input_size"]
    return Preprocessing(max(height, width), tuple(found["mean"]), tuple(found["std"]))


# --- pretrained weights from a file ------------------------------------------------------------


def load_pretrained(model: nn.Module, source: str, log: Callable[[str], None]) -> None:
    """Load ``--pretrained``'s weights into the timm ``model``: timm's own from its hub
    (``source`` is HUB), or a weights file's: every weight of the body; the classifier head too
    if its shape fits (the same number of classes), else it stays new. A stem pretrained on RGB
    is adapted to the model's channels."""
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(pretrained_cfg, dict):
        raise BlitzError(
            f"--pretrained {source}: pretrained weights load into timm models only: use "
            f"--model {PREFIX}NAME (to start one of blitz's models from a run, use --init RUN_DIR)"
        )
    if source == HUB:
        load_hub_weights(model, pretrained_cfg, log)
        return
    path = Path(source).expanduser()
    own = model.state_dict()
    state = read_weights(path)
    adapted = _adapt_stem(state, own, pretrained_cfg)
    heads = _head_names(model, pretrained_cfg)
    new = [k for k in own if _in_head(k, heads) and not _same_shape(state.get(k), own[k])]
    body = {k: v for k, v in state.items() if k not in new}
    _check_fit(body, own, new, path, pretrained_cfg.get("architecture", "this model"))
    model.load_state_dict({**own, **body})
    log(_loaded_message(source, len(body), adapted, heads if new else []))


def fetch_hub_weights(name: str) -> None:
    """Fetch timm's pretrained weights for the model ``name`` (``timm:resnet18``) into the hub's
    cache, so that a run without them stops before it decodes any data."""
    arch = name.removeprefix(PREFIX)
    check_timm_name(arch)
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(arch)
    _pretrained_model(pretrained.to_dict() if pretrained else {"architecture": arch})


def load_hub_weights(model: nn.Module, pretrained_cfg: dict, log: Callable[[str], None]) -> None:
    """timm's pretrained weights for ``model``, downloaded from the Hugging Face Hub (or its
    cache) and adapted to the model's classes and channels exactly as ``timm.create_model(...,
    pretrained=True)`` does."""
    convs = [model.get_submodule(conv) for conv in _names(pretrained_cfg.get("first_conv"))]
    classes = getattr(model, "num_classes", pretrained_cfg.get("num_classes", 1000))
    pretrained = _pretrained_model(
        pretrained_cfg, num_classes=classes, in_chans=convs[0].in_channels
    )
    model.load_state_dict(pretrained.state_dict())
    fits = classes == pretrained_cfg.get("num_classes")
    head = "the classifier head too" if fits else "the classifier head starts afresh"
    log(f"pretrained weights: timm's {_tagged(pretrained_cfg)} ({head})")


def _pretrained_model(pretrained_cfg: dict, **options: Any) -> nn.Module:
    """timm's model of ``pretrained_cfg`` with its pretrained weights; a BlitzError with the way
    out where there are none, or no network to fetch them."""
    name = _tagged(pretrained_cfg)
    hub_id = pretrained_cfg.get("hf_hub_id") or ""
    if not (hub_id or pretrained_cfg.get("url")):
        raise BlitzError(
            f"timm publishes no pretrained weights for {name}: choose one of "
            "timm.list_models(pretrained=True), or pass --pretrained FILE"
        )
    try:
        with _quiet_hub():
            return import_timm().create_model(name, pretrained=True, **options)
    except Exception as exc:  # no network, no disk space, a damaged download: the way out
        page = f"https://huggingface.co/{hub_id}" if hub_id else pretrained_cfg["url"]
        raise BlitzError(
            f"cannot fetch timm's pretrained weights for {name} ({_first_line(exc)}). They are "
            f"downloaded once from {page} and cached; on a machine without a network, download "
            "its model.safetensors on one that has one, copy it here and pass --pretrained "
            'FILE, or train from random weights instead: --set model.pretrained=""'
        ) from None


def _tagged(pretrained_cfg: dict) -> str:
    """``resnet18.a1_in1k``: the architecture and the tag of its weights."""
    return ".".join(filter(None, (pretrained_cfg.get("architecture"), pretrained_cfg.get("tag"))))


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub's own lines (a retry and a wait per attempt, a dozen with no network)
    are kept out of the terminal: a failure is said once, by blitz."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub.setLevel(level)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a .safetensors file or a PyTorch file (read with
    ``weights_only=True``: no code in it can run), its size bounded before it is read."""
    if not path.is_file():
        raise BlitzError(
            f"--pretrained {path}: no such file; pass a weights file (.safetensors, .pt or .pth), "
            "such as a timm model's model.safetensors from the Hugging Face Hub"
        )
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise BlitzError(
            f"--pretrained {path} is {format_size(size)}, more than the "
            f"{format_size(MAX_WEIGHTS_BYTES)} a weights file may be: fine-tune a smaller model"
        )
    try:
        raw = _read(path)
    except Exception as exc:  # any failure to parse means "not weights we can trust"
        raise BlitzError(
            f"cannot read --pretrained {path} ({_first_line(exc)}): pass a .safetensors file or "
            "a PyTorch state dict saved with torch.save(model.state_dict(), PATH)"
        ) from None
    return _state_dict(raw, path)


def _read(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """The names -> tensors in ``raw``: a state dict, or one under "state_dict" or "model" (a
    training checkpoint), with DistributedDataParallel's "module." prefix dropped."""
    if isinstance(raw, dict):
        raw = next((raw[k] for k in ("state_dict", "model") if isinstance(raw.get(k), dict)), raw)
    fits = (
        isinstance(raw, dict)
        and raw
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items())
    )
    if not fits:
        raise BlitzError(
            f"--pretrained {path} holds no state dict (names -> tensors) but "
            f"{_describe(raw)}: pass a file saved with torch.save(model.state_dict(), PATH) or "
            "a .safetensors file"
        )
    if all(k.startswith("module.") for k in raw):
        return {k.removeprefix("module."): v for k, v in raw.items()}
    return dict(raw)


def _describe(raw: Any) -> str:
    if isinstance(raw, dict):
        return f"a dict of {len(raw)} entries" if raw else "an empty dict"
    return f"a {type(raw).__name__}"


def _adapt_stem(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], pretrained_cfg: dict
) -> list[str]:
    """Fit the first conv's filters to the model's input channels in place (an RGB stem summed
    for grey images, as timm does); returns the names of those it changed."""
    from timm.models import adapt_input_conv

    adapted = []
    for conv in _names(pretrained_cfg.get("first_conv")):
        key = f"{conv}.weight"
        theirs, ours = state.get(key), own.get(key)
        if theirs is None or ours is None or theirs.ndim != 4 or ours.ndim != 4:
            continue
        if theirs.shape[1] != ours.shape[1]:
            try:
                state[key] = adapt_input_conv(ours.shape[1], theirs, base_chans=theirs.shape[1])
            except (NotImplementedError, ValueError, AssertionError):
                continue  # left as it is: the fit check names it
            adapted.append(conv)
    return adapted


def _head_names(model: nn.Module, pretrained_cfg: dict) -> list[str]:
    """The classifier's module names: timm's pretrained_cfg says, or ``get_classifier()``."""
    names = _names(pretrained_cfg.get("classifier"))
    # getattr: Module's own __getattr__ would type it a Tensor or Module, not a method
    get_classifier = getattr(model, "get_classifier", None)
    if names or get_classifier is None:
        return names
    head = get_classifier()
    return [name for name, module in model.named_modules() if module is head]


def _names(value: Any) -> list[str]:
    """timm's cfg names one module as a string, several as a tuple."""
    return [value] if isinstance(value, str) else list(value or ())


def _in_head(key: str, heads: list[str]) -> bool:
    return any(key.startswith(f"{head}.") for head in heads)


def _same_shape(theirs: torch.Tensor | None, ours: torch.Tensor) -> bool:
    return theirs is not None and theirs.shape == ours.shape


def _check_fit(
    body: dict[str, torch.Tensor], own: dict[str, torch.Tensor], new: list[str], path: Path,
    arch: str,
) -> None:  # fmt: skip
    """A BlitzError naming what differs, unless ``body`` gives every weight outside the head."""
    found = {
        "with other shapes": [
            f"{k} {_shape(v)} (here {_shape(own[k])})"
            for k, v in body.items()
            if k in own and v.shape != own[k].shape
        ],
        "missing": [k for k in own if k not in body and k not in new],
        "unknown to the model": [k for k in body if k not in own],
    }
    problems = [_examples(what, keys) for what, keys in found.items() if keys]
    if problems:
        raise BlitzError(
            f"--pretrained {path} does not fit timm's {arch} ({'; '.join(problems)}): it holds "
            f"another model's weights; pass weights saved from {arch}, or use --model "
            f"{PREFIX}NAME with the model they were saved from"
        )


def _examples(what: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:EXAMPLES]) + (", ..." if len(keys) > EXAMPLES else "")
    return f"{len(keys)} tensors {what}: {shown}"


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _loaded_message(source: str, count: int, adapted: list[str], new_heads: list[str]) -> str:
    message = f"pretrained weights from {source}: {count} tensors loaded"
    if adapted:
        message += f", the first conv ({', '.join(adapted)}) adapted to the images' channels"
    if new_heads:
        return message + f"; the classifier head ({', '.join(new_heads)}) starts afresh"
    # a state dict names no classes: a head of the right size is taken to be for these
    return message + " (the classifier head too: it is sized for as many classes as these)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
