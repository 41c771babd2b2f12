"""Every Config a run uses is built here: the settings checked on their own
(``blitz.config.settings``), then against the model registry, which only this layer knows:
the model exists and takes those options, pretrained weights go into a timm model, and "auto"
inputs become the model's."""

from __future__ import annotations

import dataclasses
from typing import Any

from blitz.config.loading import merge_settings
from blitz.config.settings import Config, parse_config
from blitz.errors import BlitzError
from blitz.models import check_model_name, check_options, model_preprocessing
from blitz.models.timm_models import PREFIX


def check_model_settings(cfg: Config) -> Config:
    """``cfg`` checked against the registry, its "auto" image size and normalisation resolved."""
    name = cfg.model.name
    check_model_name(name)
    check_options(name, cfg.model.options)  # types here; ranges when the model is built
    if cfg.model.pretrained and not name.startswith(PREFIX):
        raise BlitzError(
            f"--pretrained needs a --model {PREFIX}NAME to load weights into ({name} is "
            "blitz's own: start it from a run of yours with --init RUN_DIR)"
        )
    found = model_preprocessing(name)
    preprocessing = found._asdict() if found else None
    data = cfg.data.resolved(name, preprocessing, cfg.model.pretrained)
    return dataclasses.replace(cfg, data=data)


def config_from_dict(raw: dict[str, Any], preset: str = "custom") -> Config:
    """A validated Config from nested plain data, naming any unknown setting."""
    return check_model_settings(parse_config(raw, preset))


def build_config(
    preset: str, overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> Config:
    """A preset (or the raw settings ``base``) with overrides applied, validated (see
    ``blitz.config.loading.merge_settings`` for what a preset keeps when a model is changed)."""
    raw = merge_settings(preset, overrides, base)
    return config_from_dict(raw, raw["preset"])
