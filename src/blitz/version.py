"""blitz's version, in a module of its own: what a run records and ``--version`` prints can be
read without importing the package root (which would import upwards from any layer)."""

__version__ = "0.1.0"
