"""blitz: train and test image classifiers with PyTorch (the 60 Minute Blitz as real software)."""

__version__ = "0.1.0"
