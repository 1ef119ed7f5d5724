"""Framework integrations, each imported only when used (they need their framework installed).

* :mod:`texwatch.integrations.lightning`: ``TexwatchCallback`` for PyTorch Lightning.
* :mod:`texwatch.integrations.accelerate`: ``AcceleratorRecorder`` for Hugging Face accelerate
  loops (what the diffusers training scripts use).
"""

__all__: list[str] = []
