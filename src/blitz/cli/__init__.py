"""The ``blitz`` command: parse, call the library, print. One module per subcommand, each with
``add_parser(sub)`` and ``main(args)`` (train's also takes the start time and the command line)."""

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
from types import ModuleType
from typing import NoReturn

from blitz.cli import (  # light: each imports torch only when its command runs
    doctor,
    evaluate,
    explain,
    export,
    inspect,
    lr_find,
    models,
    predict,
    presets,
    report,
    serve,
    show,
    train,
    tune,
)
from blitz.config.checks import FLAGS
from blitz.errors import did_you_mean

# subcommand -> its module, in the order `blitz --help` lists them
COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "tune": tune,
    "eval": evaluate,
    "show": show,
    "inspect": inspect,
    "predict": predict,
    "report": report,
    "lr-find": lr_find,
    "export": export,
    "explain": explain,
    "presets": presets,
    "models": models,
    "serve": serve,
    "doctor": doctor,
}


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
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


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


def _version() -> str:
    from blitz.version import __version__

    return f"blitz {__version__}"


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
    from blitz.errors import BlitzError, path_too_long
    from blitz.utils.allocator import keep_freed_memory
    from blitz.utils.signals import StopRequested

    keep_freed_memory()  # megabytes of activations a step, reused rather than paged in anew

    try:
        if args.command == "train":
            train.main(args, started, argv)
        else:
            return COMMANDS[args.command].main(args) or 0
    except BlitzError as exc:
        print(f"blitz: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `blitz ... | head`: the reader left; say nothing more to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a path too long, from the command line or a file: said as such
        if (error := path_too_long(exc)) is None:
            raise
        print(f"blitz: error: {error}", file=sys.stderr)
        return 2
    except StopRequested as exc:  # a checkpoint was saved; the message says how to resume
        if os.environ.get("RANK", "0") == "0":  # under torchrun: the process that saved it
            print(f"blitz: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("blitz: interrupted", file=sys.stderr)
        return 130
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
