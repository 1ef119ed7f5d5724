"""texwatch: training telemetry for diffusion and LoRA image models.

The training loop imports :mod:`texwatch.client` (numpy + zarr only); ``texwatchd`` and the
``texwatch`` command do the heavy work beside it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
