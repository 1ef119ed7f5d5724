"""Framework integrations, each imported only when used (they need their framework installed).

* :mod:`texwatch.integrations.lightning`: ``TexwatchLogger`` (what ``self.log`` logs) and
  ``TexwatchCallback`` (what ``training_step`` holds) for PyTorch Lightning.
* :mod:`texwatch.integrations.accelerate`: ``TexwatchTracker`` (what ``accelerator.log`` logs,
  ``--report_to texwatch`` in the diffusers scripts) and ``AcceleratorRecorder`` (what the
  training step holds) for Hugging Face accelerate loops.

:func:`storable_name` is the name a logged key is stored under (see docs/integrations.md).
"""

from ._names import storable_name

__all__ = ["storable_name"]
