"""smallvit: train Vision Transformers from scratch on small image datasets."""

__version__ = "0.1.0"
