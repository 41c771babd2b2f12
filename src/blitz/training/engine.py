"""The training loop: optimizer, loss, learning-rate schedule, and per-epoch progress."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from blitz.config.settings import Config
from blitz.config.types import concrete
from blitz.data.counts import balanced_weights
from blitz.data.dataset import AnySplit, Batch, ImageData, Split
from blitz.data.preprocess import normalize
from blitz.training.checkpoint import load_state
from blitz.training.compiling import compile_recovering
from blitz.training.context import RunContext
from blitz.training.devices import grad_scaler, synchronize
from blitz.training.distributed import epoch_batches, sum_over_ranks, wrap
from blitz.training.evaluate import eval_batch_rows, evaluate
from blitz.training.loop import (
    Loop,
    NonFiniteLoss,
    TrainHooks,
    TrainState,
    new_state,
    planned_steps,
)
from blitz.training.multilabel import (
    DEFAULT_THRESHOLD,
    exact_hits,
    multilabel_scores,
    split_logits,
)
from blitz.training.optim import (
    build_optimizers,
    lr_factor,
    stepper,
    unflatten_filters,
)
from blitz.training.progress import Progress
from blitz.training.step import scheduled_step, train_step


def build_loop(
    ctx: RunContext, data: ImageData, model: nn.Module, progress: Progress, hooks: TrainHooks
) -> Loop:
    """Set up optimizers, state and EMA for training ``model`` on ``data.train``."""
    cfg, device, world = ctx.cfg, ctx.device, ctx.world
    compiled = bool(cfg.train.compile)  # "auto": fit_to_device made it concrete for the device
    classes = len(data.classes)
    weights = balanced_weights(data.train.labels, classes)
    ema = None
    if cfg.optim.ema:
        avg = get_ema_multi_avg_fn(cfg.optim.ema)
        ema = AveragedModel(model, multi_avg_fn=avg, use_buffers=True)
    net = wrap(model, world, device, cfg.train.sync_bn)
    tested = ema.module if ema else model
    optimizers = build_optimizers(model, cfg.optim)
    scaler = grad_scaler(cfg.train.precision, device)
    return Loop(
        cfg=cfg,
        model=model,
        # torch's stub types compile()'s result a function; given a Module it is an OptimizedModule
        net=torch.compile(net) if compiled else net,  # type: ignore[arg-type]
        # testing stays eager: the filters' 2-D parametrisation is removed before the final test,
        # which would make a compiled copy compile again inside the timed evaluation
        eval_net=tested,
        world=world,
        optimizers=optimizers,
        scaler=scaler,
        update=stepper(optimizers, scaler, compiled),
        split=data.train.to(device),
        val=data.val if cfg.train.eval_every_epoch else None,
        classes=classes,
        multi_label=data.multi_label,
        loss_weights=weights.to(device) if cfg.optim.class_weights == "balanced" else None,
        row_weights=weights[data.train.labels.cpu()] if cfg.train.sampler == "balanced" else None,
        total=planned_steps(cfg, len(data.train)),
        ema=ema,
        state=new_state(cfg, device, world),
        progress=progress,
        hooks=hooks,
    )


def train(
    ctx: RunContext,
    data: ImageData,
    model: nn.Module,
    progress: Progress | None = None,
    hooks: TrainHooks | None = None,
) -> Loop:
    """Train ``model`` on ``data.train`` (ending with the EMA weights, if any, and with
    ``train.keep`` "best" the best validation epoch's); score ``data.val`` after each epoch.

    Returns the loop: its ``state`` says what happened, its ``eval_net`` tests the result."""
    cfg, device = ctx.cfg, ctx.device
    progress = progress or Progress(cfg, ctx.log, ctx.quiet)
    loop = build_loop(ctx, data, model, progress, hooks or TrainHooks())
    state = loop.state
    if cfg.train.compile:
        state.compile_seconds = warm_up(loop, data, device)
    started = time.perf_counter()
    _prepare_model(loop, device)
    state.train_seconds += time.perf_counter() - started  # data-dependent init counts as training
    loop.hooks.start(loop)  # a resumed run takes over its saved state here
    try:
        while (
            state.epoch < cfg.train.epochs and state.step < loop.total and not _patience_out(loop)
        ):
            steps = _train_epoch(loop, device)
            state.train_seconds += state.epoch_seconds
            _finish_epoch(loop, steps)
            loop.hooks.after_epoch(state)
    except BaseException:  # a stop (Ctrl-C, SIGTERM, a failed step): TensorBoard flushes on close
        progress.close(failed=True)
        raise
    progress.close()
    if state.history and "val_accuracy" in state.history[-1]:
        _keep_weights(loop, ctx)
    if loop.ema:
        model.load_state_dict(loop.ema.module.state_dict())
    unflatten_filters(model)
    if cfg.train.log_every:
        ctx.log("Finished Training")
    return loop


def check_finite(state: TrainState, cfg: Config, total: int) -> None:
    """Raise NonFiniteLoss if any loss so far was NaN or infinite (one device sync)."""
    bad = int(state.bad_step.item())
    if bad < 0:
        return
    lr = cfg.optim.lr * lr_factor(bad - 1, total, cfg.optim)  # the rate that step used
    raise NonFiniteLoss(
        f"the loss became NaN or infinite at step {bad} (learning rate {lr:.3g}): training "
        "stopped, and no weights from that step on were saved. Lower the learning rate "
        f"(e.g. --lr {cfg.optim.lr / 10:.3g})"
    )


def _note_non_finite(state: TrainState, loss: torch.Tensor) -> None:
    # Checking each loss with .item() would sync the device every step; instead remember the
    # first bad step on the device, and look at it only where we sync anyway (checkpoints, epochs).
    first = (state.bad_step < 0) & ~torch.isfinite(loss)
    state.bad_step = torch.where(first, state.step, state.bad_step)


def _patience_out(loop: Loop) -> bool:
    """Whether ``train.patience`` epochs have passed without a better validation epoch (more
    accurate, or as accurate at a lower loss: ``_note_best``)."""
    patience, state = loop.cfg.train.patience, loop.state
    return bool(patience) and state.epoch - state.best_epoch >= patience


def _keep_weights(loop: Loop, ctx: RunContext) -> None:
    """Say why training ended and which epoch's weights the run keeps (``train.keep``); with
    "best", put the best validation epoch's back."""
    state = loop.state
    cut = state.epoch < loop.cfg.train.epochs and state.step < loop.total
    why = (
        f"stopped early after epoch {state.epoch}: no better validation accuracy (nor as "
        f"accurate at a lower loss) for {loop.cfg.train.patience} epochs"
        if cut
        else "training done"
    )
    if state.best_weights is None:  # train.keep "last"
        ctx.log(f"{why}; keeping the weights of the last epoch ({state.epoch}; train.keep=last)")
        return
    figure = "mAP" if loop.multi_label else "accuracy"
    ctx.log(
        f"{why}; keeping the weights of epoch {state.best_epoch} (best validation {figure} "
        f"{100 * state.best_accuracy:.2f} %; --set train.keep=last keeps the last epoch's)"
    )
    loop.eval_net.load_state_dict(state.best_weights)


def _note_best(loop: Loop, accuracy: float, loss: float = math.inf) -> None:
    """Remember the best validation epoch (and with ``train.keep`` "best", its weights): the
    most accurate, and of those as accurate, the one of lower validation loss (a validation set
    of a few images is all right within epochs: the first of them was no better than the
    last, only less sure)."""
    state, loss = loop.state, loss if math.isfinite(loss) else math.inf  # NaN: never better
    if (accuracy, -loss) <= (state.best_accuracy, -state.best_loss):
        return
    state.best_accuracy, state.best_loss, state.best_epoch = accuracy, loss, state.epoch
    if loop.cfg.train.keep == "best":
        weights = loop.eval_net.state_dict()
        state.best_weights = {k: v.detach().clone() for k, v in weights.items()}


def _finish_epoch(loop: Loop, steps: int) -> None:
    """Close an epoch: check the loss, count it, score the validation set, record it."""
    cfg, state, world = loop.cfg, loop.state, loop.world
    check_finite(state, cfg, loop.total)
    state.epoch += 1
    images = min(steps * cfg.train.batch_size, len(loop.split))
    loss = sum_over_ranks(state.epoch_loss, world).item() / world.size / max(steps, 1)
    correct = sum_over_ranks(state.epoch_correct, world).item()
    state.epoch_loss.zero_()
    state.epoch_correct.zero_()
    record = {
        "epoch": state.epoch,
        "train_loss": round(loss, 6),
        "train_accuracy": round(correct / max(images, 1), 6),
        "seconds": round(state.epoch_seconds, 3),
        "lr": loop.optimizers[-1].param_groups[0]["lr"],  # at the epoch's last step
    }
    state.batch, state.epoch_seconds = 0, 0.0
    if loop.val is not None and loop.multi_label:  # the epoch is chosen by mAP
        record["val_accuracy"], record["val_map"] = _multilabel_figures(loop, loop.val)
        _note_best(loop, record["val_map"])
    elif loop.val is not None:
        record["val_accuracy"], record["val_loss"] = _accuracy_and_loss(loop, loop.val)
        _note_best(loop, record["val_accuracy"], record["val_loss"])
    state.history.append(record)
    loop.progress.end_epoch(record)


def _prepare_model(loop: Loop, device: torch.device) -> None:
    """Data-dependent initialisation (a whitening first layer): a model with ``prepare(images)``
    gets its first ``prepare_images`` training images, normalised. Not after a warm start: its
    weights, that layer's included, came from ``--init`` (whitened anew on other images, the
    filters could come out in another order or sign than the layers after them learned)."""
    prepare = getattr(loop.model, "prepare", None)
    count = min(getattr(loop.model, "prepare_images", 0), len(loop.split))
    if prepare and count and not loop.cfg.train.init:
        cfg = loop.cfg.data
        images = loop.split.images_at(torch.arange(count))
        prepare(normalize(images.to(device), concrete(cfg.mean), concrete(cfg.std)))
        synchronize(device)


def warm_up(loop: Loop, data: ImageData, device: torch.device) -> float:
    """Compile (train and eval graphs) on a few steps and one test batch, then restore every
    state: returns the seconds it took, which are reported apart from the training time. A
    damaged compile cache is rebuilt once; a compile that still fails is a BlitzError."""
    started = time.perf_counter()
    saved = _snapshot(loop)

    def compile_once() -> None:
        try:
            _prepare_model(loop, device)
            first = _epoch_batches(loop)[: min(2, loop.total)]  # the shapes training uses
            for batch in loop.split.load(first, device):
                scheduled_step(loop, *batch)
            if not loop.multi_label:
                _accuracy_and_loss(loop, _one_test_batch(loop, data, device))
        finally:  # a failed try leaves no trace for the next one, nor for training
            _restore(loop, saved, device)

    compile_recovering(compile_once, loop.progress.log)
    synchronize(device)
    return time.perf_counter() - started


def _one_test_batch(loop: Loop, data: ImageData, device: torch.device) -> Split:
    """One evaluation batch per process of the test set: compiling needs the shapes the test
    meets, not the whole test set."""
    test = data.test_set()
    size = min(len(test), eval_batch_rows(loop.cfg) * loop.world.size)
    _, images, labels = next(test.load([torch.arange(size)], device))
    return Split(images, labels)


def _snapshot(loop: Loop) -> dict:
    """Everything a training step changes: weights, optimizers, EMA, loss scale, loop state."""
    objects = {"model": loop.model, **loop.stateful}
    states = {name: obj.state_dict() for name, obj in objects.items()}
    return copy.deepcopy({"objects": states, "state": loop.state.to_dict()})


def _restore(loop: Loop, saved: dict, device: torch.device) -> None:
    objects = {"model": loop.model, **loop.stateful}
    for name, obj in objects.items():
        load_state(obj, saved["objects"][name], f"the {name}")  # optimizers: in place
    loop.state.load_dict(saved["state"], device)


def _accuracy_and_loss(loop: Loop, split: AnySplit) -> tuple[float, float]:
    """A split's accuracy and mean cross-entropy."""
    result = evaluate(loop.eval_net, split, loop.cfg, loop.classes, loop.world)
    return round(result.accuracy, 6), round(result.loss.mean().item(), 6)


def _multilabel_figures(loop: Loop, split: AnySplit) -> tuple[float, float]:
    """A multi-label set's subset accuracy (at 0.5) and macro mAP."""
    logits, labels = split_logits(loop.eval_net, split, loop.cfg, loop.world)
    k = labels.shape[1]
    figures = multilabel_scores(logits.sigmoid(), labels, [DEFAULT_THRESHOLD] * k, [""] * k)
    return figures.subset_accuracy, figures.map


def _epoch_batches(loop: Loop) -> list[torch.Tensor]:
    """This rank's batches of the current epoch (a function of the seed and the epoch alone, so a
    resumed epoch replays the same order)."""
    train = loop.cfg.train
    return epoch_batches(
        len(loop.split),
        train.batch_size,
        train.seed,
        loop.state.epoch,
        loop.world,
        loop.row_weights,
    )


def _train_epoch(loop: Loop, device: torch.device) -> int:
    """One pass over the shuffled training split (or the rest of one); returns its step count."""
    state = loop.state
    loop.model.train()
    batches = _epoch_batches(loop)
    # a resumed epoch counts the batches it did before the restart
    steps = min(len(batches), loop.total - state.step + state.batch)
    loop.progress.start_epoch(state.epoch, steps, state.batch)
    clock = time.perf_counter()
    for rows, images, labels in loop.split.load(batches[state.batch : steps], device):
        loss, logits = scheduled_step(loop, rows, images, labels)
        state.batch += 1
        _note_non_finite(state, loss)
        state.epoch_loss += loss
        if loop.multi_label:  # an image is right when its whole label set is
            correct = exact_hits(logits, labels)
        else:
            correct = (logits.argmax(1) == labels).sum()
        state.epoch_correct += correct
        loop.progress.step(state.step, loss, correct, len(labels), loop.optimizers[-1])
        clock = _tick(state, clock)  # a checkpoint saves the time spent so far
        loop.hooks.after_step(state)
    synchronize(device)  # so that the epoch's time is honest
    _tick(state, clock)
    return steps


def _tick(state: TrainState, since: float) -> float:
    now = time.perf_counter()
    state.epoch_seconds += now - since
    return now


def train_at_factors(
    loop: Loop, factors: Iterable[float], device: torch.device
) -> Iterator[torch.Tensor]:
    """Training without a schedule: the model's data-dependent init, then one ``train_step``
    per factor on the epochs' batches in order; yields each step's loss per sample (detached,
    on the device). The learning-rate range test trains this way."""
    loop.model.train()
    _prepare_model(loop, device)
    batches = _endless_batches(loop, device)
    for factor in factors:
        loss, _ = train_step(loop, *next(batches), factor)
        yield loss


def _endless_batches(loop: Loop, device: torch.device) -> Iterator[Batch]:
    while True:
        yield from loop.split.load(_epoch_batches(loop), device)
        loop.state.epoch += 1  # the next epoch's order (and alternating flips)
