"""Framework integrations, each imported only when used (they need their framework installed).

* :mod:`texwatch.integrations.lightning`: ``TexwatchLogger`` (what ``self.log`` logs) and
  ``TexwatchCallback`` (what ``training_step`` holds) for PyTorch Lightning.
* :mod:`texwatch.integrations.accelerate`: ``TexwatchTracker`` (what ``accelerator.log`` logs,
  ``--report_to texwatch`` in the diffusers scripts) and ``AcceleratorRecorder`` (what the
  training step holds) for Hugging Face accelerate loops.

Every logged key is recorded as it was logged; the store's name for it is ``record()``'s (see
docs/client.md, "Names").
"""
