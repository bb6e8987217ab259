"""CT segmentation inference: model bundle, resampling, sliding window, backends (no torch here)."""
