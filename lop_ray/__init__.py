"""lop-ray: the experiments of "Loss of Plasticity in Deep Continual Learning" as Ray Tune sweeps."""

__version__ = "0.1.0"
