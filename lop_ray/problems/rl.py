"""Reinforcement learning (PPO on MuJoCo) in a sweep file (spec/problems.md §5).

`num_tasks` counts trainable steps: one step runs `iterations_per_step` PPO iterations of
`batch_size` env steps, so a trial runs num_tasks × iterations_per_step × batch_size env steps.
The settings every algorithm shares (PPO's own, the env, the runner layout) are problem settings;
an algorithm entry chooses the optimizer's settings and the intervention.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from lop_ray.algos.cbp import CBPConfig, InitScheme, UtilType
from lop_ray.problems.base import Count, ProblemSpec, Rate, Real, Strict
from lop_ray.problems.learners import (
    InjectionHyperparameters,
    L2InitHyperparameters,
    LayerResetHyperparameters,
    ParsevalHyperparameters,
    ReDoHyperparameters,
    SNRHyperparameters,
)
from lop_ray.rl.acting import ACTING_ACTIVATIONS
from lop_ray.rl.envs import ENVS, MAX_EPISODE_STEPS, is_ant
from lop_ray.rl.friction import CHANGE_EVERY


class RLProblem(Strict):
    env: Literal[ENVS]  # type: ignore[valid-type]
    # spec/fidelity.md row 12: `original` = the original's 111-d Ant observation without contact cost
    ant_observation: Literal["original", "v5"] = "v5"
    batch_size: Count = Field(2048, ge=1)  # env steps per PPO iteration
    minibatch_size: Count = Field(128, ge=1)
    epochs: Count = Field(10, ge=1)
    gamma: Real = Field(0.99, gt=0, le=1)
    gae_lambda: Rate = 0.95
    clip: Real = Field(0.2, gt=0)
    value_coef: Real = Field(1.0, ge=0)
    entropy_coef: Real = Field(0.0, ge=0)
    max_grad_norm: Real | None = Field(None, gt=0)  # None: no clipping (the original's 1e9)
    normalize_observations: bool = False
    normalize_rewards: bool = False
    iterations_per_step: Count = Field(10, ge=1)
    # env runner Ray actors per trial (0: the trial's own process steps the envs) and envs in each
    env_runners: Count = Field(0, ge=0)
    envs_per_runner: Count = Field(1, ge=1)
    # instead of envs_per_runner: each seed's envs, all the trial's seeds' envs spread evenly over
    # the runners (one seed: envs_per_runner × runners)
    envs_per_seed: Count | None = Field(None, ge=1)
    env_threads: Count = Field(1, ge=1)  # threads stepping each runner's envs (MuJoCo releases the GIL)
    runner_cpus: Real = Field(1.0, gt=0)  # CPUs reserved for each runner actor
    friction_change_every: Count = Field(CHANGE_EVERY, ge=1)  # SlipperyAnt-v5 only
    max_episode_steps: Count = Field(MAX_EPISODE_STEPS, ge=1)

    @property
    def total_envs(self) -> int:
        """Envs of each seed."""
        if self.envs_per_seed is not None:
            return self.envs_per_seed
        return max(self.env_runners, 1) * self.envs_per_runner

    @model_validator(mode="after")
    def _consistent(self):
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) exceeds batch_size ({self.batch_size})")
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must divide batch_size ({self.batch_size}): every "
                "minibatch of an epoch has the same size"
            )
        if self.envs_per_seed is not None and "envs_per_runner" in self.model_fields_set:
            raise ValueError(
                "give envs_per_seed or envs_per_runner, not both: with envs_per_seed the runners share "
                "all seeds' envs evenly"
            )
        if self.batch_size % self.total_envs:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of the number of envs "
                f"of each seed (envs_per_seed, or max(env_runners, 1) × envs_per_runner: {self.total_envs}): each "
                "env steps equally"
            )
        per_env = self.iterations_per_step * self.batch_size // self.total_envs
        if per_env < self.max_episode_steps:
            raise ValueError(
                f"each env steps iterations_per_step × batch_size / envs = {per_env} times per trainable "
                f"step, fewer than max_episode_steps ({self.max_episode_steps}): a step could end no "
                "episode and have no return; raise iterations_per_step or batch_size, or use fewer envs"
            )
        if self.ant_observation == "original" and not is_ant(self.env):
            raise ValueError(
                f"ant_observation 'original' applies to Ant-v5 and SlipperyAnt-v5, not {self.env}"
            )
        if "friction_change_every" in self.model_fields_set and self.env != "SlipperyAnt-v5":
            raise ValueError(f"friction_change_every applies to SlipperyAnt-v5 only, not {self.env}")
        return self


class RLNetwork(Strict):
    """Policy and value networks: obs → hidden_units × hidden_layers → out, lecun-uniform."""

    activation: Literal[ACTING_ACTIVATIONS] = "relu"  # type: ignore[valid-type]  # the runners' numpy copy
    hidden_units: Count = Field(256, ge=1)
    hidden_layers: Count = Field(2, ge=1)
    layer_norm: bool = False  # every hidden pre-activation of both nets normalised (Lyle et al. 2024)
    crelu: bool = False  # CReLU hidden units in both nets (Abbas et al. 2023)

    @model_validator(mode="after")
    def _crelu_of_relu(self):
        if self.crelu and self.activation != "relu":
            raise ValueError(f"crelu is built of ReLUs: activation must be relu, got {self.activation!r}")
        return self

    def weight_layer_count(self) -> int:
        """Weight layers of each net (what layer resets may reset): the hidden ones and the output."""
        return self.hidden_layers + 1

    def injectable_layer_count(self) -> int:
        """Trailing weight layers that form a plain head (plasticity injection's `head_layers`): all
        of them, the output layer alone behind a norm or CReLU."""
        return 1 if self.layer_norm or self.crelu else self.hidden_layers + 1


class PPO(Strict):
    """Standard PPO (Adam β = 0.9/0.999); `beta1 = beta2 = 0.99` is the paper's tuned Adam."""

    step_size: Real = Field(1e-4, gt=0)
    beta1: Real = Field(0.9, ge=0, lt=1)
    beta2: Real = Field(0.999, ge=0, lt=1)
    eps: Real = Field(1e-8, gt=0)

    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {}


class L2(PPO):
    weight_decay: Real = Field(gt=0)  # coupled, on every parameter incl. log-std and biases


_CBP = CBPConfig()


class ContinualBackprop(PPO):
    weight_decay: Real = Field(0.0, ge=0)
    replacement_rate: Rate = _CBP.replacement_rate
    maturity_threshold: Count = Field(10_000, ge=0)  # minibatch steps
    decay_rate: Real = Field(0.99, ge=0, lt=1)  # 0: instantaneous utility (the paper's cbpi)
    util_type: UtilType = "contribution"  # of the policy net
    value_util_type: UtilType = "contribution"
    init: InitScheme = "lecun"
    accumulate: bool = False  # the original's probabilistic replacement
    bias_correction: bool
    reset_optimizer_state: bool

    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {
        "bias_correction": {"original": False, "corrected": True},
        "reset_optimizer_state": {"original": False, "corrected": True},
    }


class ReDo(ReDoHyperparameters, PPO):
    pass


# the methods since the paper (docs/methods.md) that apply to PPO's nets, each on both of them
class L2Init(L2InitHyperparameters, PPO):
    pass


class LayerReset(LayerResetHyperparameters, PPO):
    pass


class Parseval(ParsevalHyperparameters, PPO):
    pass


class SNR(SNRHyperparameters, PPO):
    pass


class PlasticityInjection(InjectionHyperparameters, PPO):
    pass


RL_ALGORITHMS = {
    "ppo": PPO,
    "l2": L2,
    "cbp": ContinualBackprop,
    "redo": ReDo,
    "l2_init": L2Init,
    "layer_reset": LayerReset,
    "parseval": Parseval,
    "snr": SNR,
    "plasticity_injection": PlasticityInjection,
}

RL = ProblemSpec(
    name="rl",
    settings_model=RLProblem,
    network_model=RLNetwork,
    algorithms=RL_ALGORITHMS,
    steps_for=lambda settings, num_tasks: num_tasks,  # one step = iterations_per_step PPO iterations
    trainable="lop_ray.trainables.ppo:PPOTrainable",
)
