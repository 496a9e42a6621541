"""Ray Tune trainables: thin adapters from the experiments to Tune (checkpoints, metrics, tracking)."""
