"""Whole jobs built from the layers below: a training run, eval, lr-find."""
