"""The ``blitz`` command: parse, call the library, print."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Literal, NoReturn, get_args, get_origin

from blitz.api import DEFAULT_PRESET, KEYWORDS  # light: no torch import
from blitz.cli import doctor
from blitz.config.settings import (  # light: no torch import
    FLAGS,
    TRAIN_FLAGS,
    Flag,
    value_from_text,
)
from blitz.errors import did_you_mean


class _Parser(argparse.ArgumentParser):
    """A command's parser whose errors are one paragraph, like every other blitz error."""

    def error(self, message: str) -> NoReturn:
        # argparse's "invalid choice: 'trian' (choose from 'train', ...)" names no closest choice
        if found := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message):
            choices = [c.strip("'\" ") for c in found[2].split(",")]
            message += did_you_mean(found[1], choices)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one subcommand per seed step and tool."""
    parser = _Parser(
        prog="blitz",
        description="Train and test image classifiers (the PyTorch 60 Minute Blitz).",
        allow_abbrev=False,  # --epoch is a typo, not --epochs: abbreviations change meaning later
    )
    parser.add_argument("--version", action="version", version=_version())
    strict = functools.partial(_Parser, allow_abbrev=False)
    sub = parser.add_subparsers(  # type: ignore[call-overload]  # typeshed wants a class; argparse calls it
        dest="command", required=True, metavar="COMMAND", parser_class=strict
    )
    _add_train(sub)
    p = sub.add_parser("eval", help="test a finished run on its test set (or another --data)")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--data", metavar="SPEC", help="data to test on (default: the run's own)")
    p.add_argument("--quiet", action="store_true", help="print only the results")
    p = sub.add_parser("show", help="write a grid of images with their labels (the seed's look)")
    p.add_argument("--data", default="auto", metavar="SPEC", help="data source (default: auto)")
    p.add_argument(
        "--run", type=Path, metavar="RUN_DIR", help="a run's own data and sets (sets.csv)"
    )
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--count", type=int, default=8, help="how many images (default: 8)")
    p.add_argument("--out", type=Path, default=Path("images.png"), metavar="FILE.png")
    p = sub.add_parser("inspect", help="the seed's walk-through: network, loss, backprop, update")
    p.add_argument("--model", default="lenet")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top-k", type=int, default=1, help="classes per image (default: 1)")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write the predictions as CSV")
    _add_report_tools(sub)
    doctor.add_parser(sub)
    p = sub.add_parser("presets", help="list the presets: what each does, and the data it suits")
    p.add_argument("--show", metavar="NAME", help="print one preset in full, as TOML (--config)")
    sub.add_parser("models", help="list the models: size, image sizes, options, what each is for")
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier, test it, and write a run directory")
    p.add_argument(
        "--preset",
        metavar="NAME",
        help=f"a preset from `blitz presets` (default: {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="settings of your own instead of a preset: a .toml file in the presets' format "
        "(blitz presets --show NAME), or a run's config.json or directory to replay it; "
        "the other options override it",
    )
    for flag in TRAIN_FLAGS.values():  # each declared once, with its setting (config.option)
        _add_setting_flag(p, flag)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting, e.g. --set optim.weight_decay=5e-4 (repeatable)",
    )
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        metavar="URI",
        help="also log the run to MLflow: any tracking URI (default: MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db here); needs pip install 'blitz[mlflow]'",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/...)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a stopped run from its newest checkpoint, with its saved settings",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or running losses")
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes on this machine (DDP through torchrun; one per GPU)",
    )


def _add_setting_flag(p: argparse.ArgumentParser, flag: Flag) -> None:
    """An option of ``blitz train`` from its setting's declaration: bare for a boolean, the
    choices of a ``Literal``; values are checked by the settings' own checks, as in a file."""
    if flag.hint is bool:
        p.add_argument(flag.flag, action="store_const", const=True, help=flag.help)
        return
    choices = get_args(flag.hint) if get_origin(flag.hint) is Literal else None
    nargs = {"nargs": "?", "const": flag.const} if flag.const is not None else {}
    metavar = flag.metavar or None
    convert = functools.partial(value_from_text, hint=flag.hint)
    p.add_argument(
        flag.flag, type=convert, choices=choices, metavar=metavar, help=flag.help, **nargs
    )


def options_table() -> str:
    """The README's table of ``blitz train``'s options, made from its parser (a test fails
    when the README's copy is stale: ``python tests/test_docs.py`` writes it)."""
    actions = build_parser()._actions
    subcommands = next(a for a in actions if isinstance(a, argparse._SubParsersAction))
    train = subcommands.choices["train"]
    keys = {flag: key for key, flag in FLAGS.items()}
    rows = ["| option | setting | what it does |", "|---|---|---|"]
    for action in train._actions:
        flag = action.option_strings[0] if action.option_strings else "-h"
        if flag == "-h":
            continue
        takes = "|".join(action.choices) if action.choices else action.metavar or ""
        shown = f"{flag} {takes}".strip() if action.nargs != "?" else f"{flag} [{takes}]"
        setting = f"`{keys[flag]}`" if flag in keys else ""
        cells = (f"`{shown}`", setting, action.help or "")
        # a bar would end the cell, in code too: escaped
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _add_report_tools(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild a run's report.html, or compare several runs")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("compare.html"),
        metavar="FILE",
        help="the comparison page, with two or more runs (default: compare.html)",
    )
    p = sub.add_parser("lr-find", help="learning-rate range test: loss against lr, a suggestion")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"(default: {DEFAULT_PRESET})")
    for key in ("data.source", "model.name", "train.batch_size", "optim.name"):
        _add_setting_flag(p, TRAIN_FLAGS[key])
    p.add_argument("--steps", type=int, default=300, help="steps of the sweep (default: 300)")
    p.add_argument("--out", type=Path, default=Path("lr_find.png"), metavar="FILE.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("export", help="write a run's model as ONNX or TorchScript, checked")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", type=Path, metavar="FILE", help="default: RUN_DIR/model.<format>")


def _version() -> str:
    from blitz.version import __version__

    return f"blitz {__version__}"


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    from blitz.api import settings_overrides
    from blitz.config.settings import parse_value
    from blitz.errors import BlitzError

    pairs = {}
    for item in getattr(args, "set", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise BlitzError(f"invalid --set {item!r}: use --set SECTION.KEY=VALUE")
        pairs[key.strip()] = parse_value(value.strip(), f"--set {key.strip()}")
    # getattr with a default: commands other than train take only some of these options
    return settings_overrides({word: getattr(args, word, None) for word in KEYWORDS}, pairs)


def cmd_train(args: argparse.Namespace, started: float, argv: list[str]) -> None:
    from blitz.api import run_training
    from blitz.errors import BlitzError
    from blitz.training.distributed import World, check_batch_size, launch, launched_by_torchrun

    if args.devices < 1:
        raise BlitzError(f"invalid --devices {args.devices}: expected an integer >= 1")
    plan = _train_plan(args)
    if args.devices > 1 and not launched_by_torchrun():
        check_batch_size(plan.cfg.train.batch_size, World(size=args.devices))
        if plan.resume is None:
            plan.run_dir.prepare(args.overwrite)
        pinned = [] if args.resume else ["--out", str(plan.run_dir), "--overwrite"]
        launch(args.devices, _without_devices(argv) + pinned)
        return
    metrics = run_training(plan, args.overwrite, args.quiet, args.mlflow, started)
    if metrics is None:  # not the first process: it prints nothing
        return
    scored = "validation" if metrics.test_set == "val" else "test"
    kept = "best validation" if metrics.kept == "best" else "last"
    print(
        f"{scored} accuracy {100 * metrics.test_accuracy:.2f} %"
        f" | weights of epoch {metrics.kept_epoch} of {metrics.epochs} ({kept})"
        f" | training {metrics.train_seconds:.1f} s | total {metrics.total_seconds:.1f} s"
        f" | run directory: {plan.run_dir}"
    )


def _train_plan(args: argparse.Namespace):
    """The settings, the run directory and the checkpoint to resume from (if any); nothing is
    written yet."""
    from blitz.api import plan_resume, plan_training

    if args.resume:
        _refuse_settings_with_resume(args)
        return plan_resume(args.resume)
    return plan_training(args.preset, _overrides(args), args.out, args.config)


def _without_devices(argv: list[str]) -> list[str]:
    """The train command line minus --devices (and --out, which the caller sets)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--devices", "--out"):
            skip = True
        elif not arg.startswith(("--devices=", "--out=")):
            out.append(arg)
    return out


def _refuse_settings_with_resume(args: argparse.Namespace) -> None:
    from blitz.api import refuse_changes_on_resume

    given = [FLAGS[key] for word, key in KEYWORDS.items() if getattr(args, word) is not None]
    names = ("preset", "config", "set", "out", "overwrite")
    given += [f"--{name}" for name in names if getattr(args, name)]
    refuse_changes_on_resume("--resume", args.resume, given)


def cmd_eval(args: argparse.Namespace) -> None:
    from blitz.training.rundir import RunDir
    from blitz.workflows.runs import eval_run

    eval_run(RunDir(args.run_dir), args.data, print if not args.quiet else _results_only())


def _results_only():
    def log(message: str) -> None:
        if message.startswith("Accuracy"):
            print(message)

    return log


def cmd_show(args: argparse.Namespace) -> None:
    from blitz.errors import BlitzError
    from blitz.outputs.plots import save_image_grid
    from blitz.utils.writes import check_output_file
    from blitz.workflows.runs import sample_rows

    if args.count < 1:
        raise BlitzError(f"invalid --count {args.count}: expected an integer >= 1")
    check_output_file(args.out, "the image grid", ".png")
    data = _show_data(args)
    split = getattr(data, args.split)
    if split is None or (args.split == "test" and data.test_is_val):
        missing = "validation" if args.split == "val" else "test"
        raise BlitzError(f"{data.name} has no {missing} set: add a {args.split}/ folder to it")
    rows = sample_rows(args.count, len(split))
    names = [data.classes[i] for i in split.labels[rows].tolist()]
    save_image_grid(split.images_at(rows), names, args.out)
    print(" ".join(f"{n:>5s}" for n in names))
    print(f"wrote {args.out}")


def _show_data(args: argparse.Namespace):
    """``--data`` with its sets as blitz makes them, or with ``--run`` the run's own."""
    from blitz.data.sources import load_data
    from blitz.errors import BlitzError
    from blitz.training.rundir import RunDir

    if args.run is None:
        return load_data(args.data)
    if args.data != "auto":
        raise BlitzError("--run shows the run's own data: drop --data")
    run_dir = RunDir(args.run)
    if not run_dir.config.is_file():
        raise BlitzError(f"{run_dir} holds no config.json: pass a run directory to --run")
    return load_data(run_dir.read_config().data, print, run_dir.read_sets())


def cmd_inspect(args: argparse.Namespace) -> None:
    from blitz.models.walkthrough import walk_through

    walk_through(args.model, args.in_channels, args.seed)


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 1 when some files could not be classified (each is named on stderr)."""
    from blitz.errors import BlitzError
    from blitz.outputs.predict import collect_images, format_prediction, predict_files, write_csv
    from blitz.training.rundir import RunDir
    from blitz.utils.writes import check_output_file

    if args.top_k < 1:
        raise BlitzError(f"invalid --top-k {args.top_k}: expected an integer >= 1")
    if args.csv:
        check_output_file(args.csv, "the CSV")  # before the work, not after it
    ckpt = RunDir(args.run_dir).load_model()
    files = collect_images(args.images)
    predictions = predict_files(ckpt.model, ckpt.build_model(), files, args.top_k)
    for prediction in predictions:
        print(format_prediction(prediction))
    if args.csv:
        write_csv(predictions, args.csv)
        print(f"wrote {args.csv}")
    skipped = len(files) - len(predictions)
    if skipped:
        print(f"blitz: skipped {skipped} of {len(files)} files (named above)", file=sys.stderr)
    return 1 if skipped else 0


def cmd_report(args: argparse.Namespace) -> None:
    from blitz.outputs.report import write_comparison
    from blitz.training.rundir import RunDir
    from blitz.utils.writes import check_output_file
    from blitz.workflows.runs import rebuild_report

    run_dirs = [RunDir(d) for d in args.run_dirs]
    if len(args.run_dirs) == 1:
        print(f"wrote {rebuild_report(run_dirs[0], log=print)}")
    else:
        check_output_file(args.out, "the comparison page", ".html")
        print(f"wrote {write_comparison(run_dirs, args.out)}")


def cmd_lr_find(args: argparse.Namespace) -> None:
    from blitz.data.sources import load_data
    from blitz.errors import BlitzError
    from blitz.models.configs import build_config
    from blitz.outputs.plots import lr_find_png
    from blitz.utils.writes import check_output_file, write_atomic
    from blitz.workflows.lrfind import lr_find, suggested_settings
    from blitz.workflows.runs import set_up

    if args.steps < 5:
        raise BlitzError(f"invalid --steps {args.steps}: expected an integer >= 5")
    check_output_file(args.out, "the lr-find plot", ".png")
    cfg = build_config(args.preset, _overrides(args))
    ctx = set_up(cfg, None, print, args.quiet, time.perf_counter())  # as train's, writing nothing
    sweep = lr_find(ctx, load_data(ctx.cfg.data), args.steps)
    write_atomic(args.out, lr_find_png(sweep.lrs, sweep.losses, sweep.suggestion))
    print(f"wrote {args.out} ({len(sweep.lrs)} steps, up to lr {sweep.lrs[-1]:.2g})")
    settings = suggested_settings(ctx.cfg.optim, sweep.suggestion)
    others = "".join(f" --set {k}={v:.2g}" for k, v in settings.items() if k != "optim.lr")
    lr = f"{sweep.suggestion:.2g}"
    print(f"suggested learning rate: {lr} (blitz train --lr {lr}{others})")


def cmd_export(args: argparse.Namespace) -> None:
    from blitz.outputs.export import default_path, export_model
    from blitz.training.rundir import RunDir

    ckpt = RunDir(args.run_dir).load_model()
    out = args.out or default_path(args.run_dir, args.format)
    facts = ckpt.model
    diff = export_model(facts, ckpt.build_model(), args.format, out)
    print(
        f"wrote {out}: input uint8 images (N, {facts.in_channels}, {facts.image_size}, "
        f"{facts.image_size}) in 0-255, output logits (N, {len(facts.classes)})"
        + (
            f", averaged over the run's test-time views ({facts.tta})"
            if facts.tta != "none"
            else ""
        )
    )
    print(f"checked against PyTorch on random images: max abs difference {diff:.2e}")


def cmd_presets(args: argparse.Namespace) -> None:
    from blitz.config.settings import list_presets, settings_toml
    from blitz.models.configs import build_config

    if args.show:
        print(settings_toml(build_config(args.show)), end="")
        return
    presets = list_presets()
    indent = " " * (max(map(len, presets)) + 2)
    for name, description in presets.items():
        print(_wrap(name.ljust(len(indent)) + description, indent))
        for line in _mirror_note(name):
            print(_wrap(indent + line, indent))


def _mirror_note(preset: str) -> list[str]:
    """What data the preset suits as far as its mirroring goes (read from its settings, so it
    cannot drift), and how to stop it: lines to print."""
    from blitz.config.settings import UNMIRRORED
    from blitz.models.configs import build_config

    cfg = build_config(preset)
    mirrors: dict[str, tuple[str, str]] = {}  # setting -> (its value, without mirroring)
    if cfg.data.flip != "none":
        mirrors["data.flip"] = cfg.data.flip, "none"
    if cfg.train.tta in UNMIRRORED:
        mirrors["train.tta"] = cfg.train.tta, UNMIRRORED[cfg.train.tta]
    if not mirrors:
        return ["no mirroring: fine for digits and text as well as photos"]
    settings = ", ".join(f"{key}={value}" for key, (value, _) in mirrors.items())
    return [
        f"mirrors images left-right ({settings}): assumes mirror-symmetric classes (photos, "
        "CIFAR-10), wrong for digits and text; to switch it off:",
        "  " + " ".join(f"--set {key}={off}" for key, (_, off) in mirrors.items()),
    ]


def _wrap(text: str, indent: str) -> str:
    """Fit a line of a listing in 100 columns, continuing under its second column."""
    import textwrap

    return textwrap.fill(text, 100, subsequent_indent=indent, break_on_hyphens=False)


def cmd_models(args: argparse.Namespace) -> None:
    from blitz.models import list_models

    print(f"{'model':<10}{'parameters':>11}{'per class':>11}  {'image sizes':<13}options")
    for name in list_models():
        print(_model_row(name))
    note = (
        "parameters: with 10 classes and 3 input channels; the classifier head holds 'per class' "
        "more for each further class. image sizes: the sides (--image-size) a model takes. "
        "options: change one with --set model.options.NAME=VALUE. timm:NAME: any of timm's "
        "models (pip install 'blitz[timm]'; list them with "
        "python -c \"import timm; print(timm.list_models('resnet*'))\"), e.g. --model "
        "timm:resnet18, at its pretrained input size; --pretrained starts it from timm's "
        "weights (fetched once), --pretrained FILE from a weights file; --preset finetune "
        "does it all."
    )
    print("\n" + _wrap(note, ""))


def _model_row(name: str) -> str:
    """Two lines: the model's facts, then what it is for."""
    from blitz.models import (
        count_parameters,
        create_model,
        input_sizes,
        model_summary,
        option_defaults,
    )

    model = create_model(name, num_classes=10, in_channels=3)
    count = count_parameters(model)
    per_class = count_parameters(create_model(name, num_classes=11, in_channels=3)) - count
    smallest, largest = input_sizes(model, name, 3)
    sizes = f">= {smallest}" if largest is None else f"{smallest} to {largest}"
    options = [f"{key}={_toml(value)}" for key, value in option_defaults(name).items()]
    facts = f"{name:<10}{count:>11,}{per_class:>11,}  {sizes:<13}{' '.join(options) or 'none'}"
    return facts + "\n" + _wrap(" " * 10 + model_summary(name), " " * 10)


def _toml(value: object) -> str:
    """A default as --set takes it: tuples as lists."""
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _reject(unknown: list[str], parser: argparse.ArgumentParser, command: str) -> None:
    """Exit with argparse's message, naming the closest option for each mistyped one."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subparser = commands.choices[command]
    options = list(subparser._option_string_actions)
    hints = [arg + did_you_mean(arg, options) for arg in unknown]
    subparser.error(f"unrecognized arguments: {' '.join(hints)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``blitz`` and ``python -m blitz``; returns the exit status."""
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as \xNN
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _reject(unknown, parser, args.command)
    from blitz.errors import BlitzError
    from blitz.utils.signals import StopRequested

    commands = {
        "eval": cmd_eval,
        "show": cmd_show,
        "inspect": cmd_inspect,
        "predict": cmd_predict,
        "report": cmd_report,
        "lr-find": cmd_lr_find,
        "export": cmd_export,
        "presets": cmd_presets,
        "models": cmd_models,
        "doctor": doctor.main,
    }
    try:
        if args.command == "train":
            cmd_train(args, started, argv)
        else:
            return commands[args.command](args) or 0
    except BlitzError as exc:
        print(f"blitz: error: {exc}", file=sys.stderr)
        return 2
    except StopRequested as exc:  # a checkpoint was saved; the message says how to resume
        if os.environ.get("RANK", "0") == "0":  # under torchrun: the process that saved it
            print(f"blitz: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("blitz: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `blitz ... | head`: the reader left; say nothing more to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def run() -> NoReturn:
    """The ``blitz`` command and ``python -m blitz``: ``main()``, then out at once.

    Python's teardown of torch's modules takes a second or more once the work is done; exit
    handlers still run and the output is flushed. With another (non-daemon) thread still alive
    (a tracker's upload, say) the usual way out waits for it.
    """
    status = main()
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    atexit._run_exitfuncs()  # what the interpreter's exit would run first
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: started with the stream closed
                stream.flush()
        except BrokenPipeError:  # the reader left (`blitz ... | head`): nothing more reaches it
            pass
        except OSError as exc:  # a full disk, a file size limit: the output is not all there
            with contextlib.suppress(OSError):
                os.write(2, f"blitz: could not write all the output: {exc}\n".encode())
            status = status or 120  # what Python's own exit returns then
    os._exit(status)
