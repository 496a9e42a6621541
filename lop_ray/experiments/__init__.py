"""Experiments: a problem's stream, network and learner wired together, advanced one task at a time.

Pure PyTorch: they run in a plain loop (benchmarks, GPU checks, notebooks); the Ray trainables are
thin adapters around them.
"""
