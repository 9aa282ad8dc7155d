"""Benchmark engines and the PyTorch peer network (benchmark.py)."""
