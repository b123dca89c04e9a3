"""Benchmarks that print their figures: `python -m runner.benchmarks.ops` (kernels) and
`python -m runner.benchmarks.e2e` (training throughput against transformers' Qwen3-Next)."""
