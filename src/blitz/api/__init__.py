"""blitz from Python (a notebook, a script): ``train`` and ``load`` give a ``Run`` to look at,
predict with, evaluate, report and export; ``tune``, ``doctor`` and ``serve`` are the tools
built on runs and data. ``blitz train`` is a layer over ``plan_training``, ``plan_resume`` and
``run_training``. Light to import: torch loads on first use.

The modules: ``common`` (argument checks), ``training`` (``train`` and its steps), ``run``
(``Run``, ``load``, ``serve``), ``jobs`` (``tune``, ``doctor``), ``images`` (in-memory images)."""

from blitz.api.common import DEFAULT_PRESET, checked
from blitz.api.jobs import doctor, tune
from blitz.api.run import ImagePrediction, Run, load, serve
from blitz.api.training import (
    KEYWORDS,
    TrainingPlan,
    plan_resume,
    plan_training,
    refuse_changes_on_resume,
    run_training,
    settings_overrides,
    train,
)
from blitz.errors import BlitzError

__all__ = [
    "DEFAULT_PRESET",
    "KEYWORDS",
    "BlitzError",
    "ImagePrediction",
    "Run",
    "TrainingPlan",
    "checked",
    "doctor",
    "load",
    "plan_resume",
    "plan_training",
    "refuse_changes_on_resume",
    "run_training",
    "serve",
    "settings_overrides",
    "train",
    "tune",
]
