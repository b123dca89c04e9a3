"""Experiment runner comparing softmax attention with linear-attention layers in hybrid language models."""
__version__ = "0.1.0"
