"""``blitz presets``: the presets, what each does and the data it suits."""

from __future__ import annotations

import argparse

from blitz.cli.options import wrap


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the presets: what each does, and the data it suits")
    p.add_argument("--show", metavar="NAME", help="print one preset in full, as TOML (--config)")


def main(args: argparse.Namespace) -> None:
    from blitz.config.loading import list_presets, settings_toml

    if args.show:  # resolved against the model registry (torch): its "auto" sizes filled in
        from blitz.models.configs import build_config

        print(settings_toml(build_config(args.show)), end="")
        return
    presets = list_presets()
    indent = " " * (max(map(len, presets)) + 2)
    for name, description in presets.items():
        print(wrap(name.ljust(len(indent)) + description, indent))
        for line in _mirror_note(name):
            print(wrap(indent + line, indent))


def _mirror_note(preset: str) -> list[str]:
    """What data the preset suits as far as its mirroring goes (read from its settings, so it
    cannot drift), and how to stop it: lines to print."""
    from blitz.config.loading import merge_settings
    from blitz.config.settings import UNMIRRORED, parse_config

    # the settings alone, without the model registry's checks: the listing needs no torch
    cfg = parse_config(merge_settings(preset, None, None), preset)
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
