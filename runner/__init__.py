"""Experiment runner comparing softmax attention with linear-attention layers in hybrid language models."""
from . import cpu_runtime

__version__ = "0.1.0"

cpu_runtime.apply()  # before any submodule imports torch: see runner/cpu_runtime.py
