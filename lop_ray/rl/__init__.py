"""Reinforcement learning (spec/problems.md §5), pure Python/PyTorch: the MuJoCo envs, the Slippery
Ant friction schedule, and env runners that collect rollouts with a copy of the policy. Ray actors
that host runners live in `lop_ray.trainables.env_runners`."""
