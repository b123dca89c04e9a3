"""Synthetic tasks: data generators and their scoring (multi-query associative recall, runner/tasks/mqar.py)."""
