"""PPO on a MuJoCo env (spec/problems.md §5); one step of the trainable = `iterations_per_step` PPO
iterations of `batch_size` env steps each.

Each iteration sends the policy's weights to the env runners (in this process, or Ray actors: any
object with `collect`/`state_dict`/`load_state_dict`, see `lop_ray.rl.runner.LocalRunners`), joins
their rollouts in global env order, and updates the networks. The step's metrics are measured on the
policy that acted: dormant units and the stable rank of its features on the last 1,000 observations
of the step's last batch (the paper's "last 1,000 acting steps"). Beside them, the plasticity
metrics (docs/methods.md, "Metrics"): the mean gradient norm of the step's minibatches before
clipping, the distance of both nets from their initial weights, the fraction of active policy units
and the churn of the policy's last hidden features of those observations over the last update.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lop_ray.algos.cbp import CBPConfig, ContinualBackprop
from lop_ray.algos.counter_rng import seed_keys
from lop_ray.algos.optim import make_optimizer
from lop_ray.algos.ppo import PPOConfig, PPOLearner
from lop_ray.algos.redo import ReDo, ReDoConfig
from lop_ray.algos.running_stats import RewardScaler, RunningMeanStd, normalize
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.metrics import rank_summaries
from lop_ray.nets.policy import GaussianPolicy, ValueNetwork
from lop_ray.plasticity_metrics import active_fraction, feature_churn
from lop_ray.rl.envs import MAX_EPISODE_STEPS
from lop_ray.rl.friction import CHANGE_EVERY
from lop_ray.rl.runner import OBS_CLIP, LocalRunners, RunnerSpec, env_dims, policy_weights, split_envs

# learner-generator purpose tags (the env runners use ACTION_NOISE = 1)
INIT, MINIBATCHES, INTERVENTIONS = 0, 2, 3
PROBE_STEPS = 1000
DORMANT_FRACTION = 0.01


@dataclass(frozen=True)
class PPOExperimentConfig:
    seed: int = 0
    env: str = "Hopper-v5"
    ant_observation: str = "v5"
    batch_size: int = 2048
    iterations_per_step: int = 1
    num_runners: int = 1
    envs_per_runner: int = 1
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    ppo: PPOConfig = field(default_factory=PPOConfig)
    step_size: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    policy_cbp: CBPConfig | None = None
    value_cbp: CBPConfig | None = None
    redo: ReDoConfig | None = None
    normalize_observations: bool = False
    normalize_rewards: bool = False
    friction_change_every: int = CHANGE_EVERY
    max_episode_steps: int = MAX_EPISODE_STEPS

    @property
    def total_envs(self) -> int:
        return self.num_runners * self.envs_per_runner

    @property
    def steps_per_env(self) -> int:
        """Steps of each env per iteration."""
        if self.batch_size % self.total_envs:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of the {self.total_envs} envs")
        return self.batch_size // self.total_envs

    def runner_specs(self) -> list[RunnerSpec]:
        return [
            RunnerSpec(
                env=self.env,
                seed=self.seed,
                env_indices=indices,
                total_envs=self.total_envs,
                ant_observation=self.ant_observation,
                hidden=self.hidden,
                activation=self.activation,
                friction_change_every=self.friction_change_every,
                max_episode_steps=self.max_episode_steps,
            )
            for indices in split_envs(self.total_envs, self.num_runners)
        ]


class PPOExperiment:
    """One run; `run_step()` runs `iterations_per_step` PPO iterations and returns their metrics."""

    def __init__(self, config: PPOExperimentConfig, runners=None, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        obs_dim, action_dim = env_dims(config.env, config.ant_observation)
        init = generator(config.seed, LEARNER, INIT)  # CPU draws: the same nets on any device
        self.policy = GaussianPolicy(obs_dim, action_dim, config.hidden, config.activation, init).to(
            self.device
        )
        self.value = ValueNetwork(obs_dim, config.hidden, config.activation, init).to(self.device)
        optimizer = self._optimizer([*self.policy.parameters(), *self.value.parameters()])
        self.intervention_generator = generator(config.seed, LEARNER, INTERVENTIONS, device=self.device)
        policy_interventions, value_interventions = self._interventions(optimizer)
        self.learner = PPOLearner(
            self.policy,
            self.value,
            optimizer,
            config.ppo,
            generator(config.seed, LEARNER, MINIBATCHES),
            policy_interventions,
            value_interventions,
        )
        self.obs_stats = RunningMeanStd((obs_dim,)) if config.normalize_observations else None
        self.reward_scaler = (
            RewardScaler(config.total_envs, config.ppo.gamma) if config.normalize_rewards else None
        )
        self.runners = runners if runners is not None else LocalRunners(config.runner_specs())
        # θ₀ of the distance metric: the nets as built, a function of the seed (a resumed run, which
        # rebuilds them before loading its checkpoint, holds the same)
        self.initial = [p.detach().clone() for p in (*self.policy.parameters(), *self.value.parameters())]
        self.steps_done = 0
        self.env_steps = 0

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """One Adam over both nets and the log-std, L2 coupled. Our per-element-step Adam where an
        intervention restarts the Adam state of single units; otherwise PyTorch's own (the
        original's), whose single step count per tensor saves a bias-correction pass per step."""
        cfg = self.config
        resets = [c.reset_optimizer_state for c in (cfg.policy_cbp, cfg.value_cbp, cfg.redo) if c is not None]
        if any(resets):
            return make_optimizer(
                params, "adam", cfg.step_size, cfg.weight_decay, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps
            )
        return torch.optim.Adam(
            params,
            cfg.step_size,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            foreach=True,
        )

    def _interventions(self, optimizer) -> tuple[list, list]:
        cfg, gen = self.config, self.intervention_generator
        policy, value = [], []
        # both draw new weights from the one intervention generator, in turn (never ahead), and
        # their per-step draws from counter streams of keys of their own
        keys = seed_keys([cfg.seed], self.device)
        if cfg.policy_cbp is not None:
            policy.append(
                ContinualBackprop(
                    self.policy.unit_groups(), optimizer, cfg.policy_cbp, gen, keys, draw_ahead=False
                )
            )
        if cfg.value_cbp is not None:
            value.append(
                ContinualBackprop(
                    self.value.unit_groups(), optimizer, cfg.value_cbp, gen, keys ^ 1, draw_ahead=False
                )
            )
        if cfg.redo is not None:
            policy.append(ReDo(self.policy.unit_groups(), optimizer, cfg.redo, gen))
            value.append(ReDo(self.value.unit_groups(), optimizer, cfg.redo, gen))
        return policy, value

    def run_step(self) -> dict[str, float]:
        start = time.perf_counter()
        returns, lengths, updates = [], [], []
        frictions = np.zeros(0)
        probe: dict[str, float] = {}
        for iteration in range(self.config.iterations_per_step):
            last = iteration == self.config.iterations_per_step - 1
            rollouts = self.runners.collect(
                policy_weights(self.policy), self.config.steps_per_env, self._stats()
            )
            obs, batch_stats, measured = self._learn(rollouts, probe=last)
            probe = measured or probe
            updates.append(batch_stats)
            for rollout in rollouts:
                returns.extend(rollout.episode_returns.tolist())
                lengths.extend(rollout.episode_lengths.tolist())
            frictions = np.concatenate([r.frictions for r in rollouts])
            if self.obs_stats is not None:  # after the update: the batch was learnt as it was acted on
                self.obs_stats.update(obs.reshape(-1, obs.shape[-1]))
        seconds = time.perf_counter() - start
        step_env_steps = self.config.iterations_per_step * self.config.batch_size
        self.env_steps += step_env_steps
        self.steps_done += 1
        metrics = {
            "episodic_return": float(np.mean(returns)) if returns else math.nan,
            "episodes": float(len(returns)),
            "episode_length": float(np.mean(lengths)) if lengths else math.nan,
            "env_steps": float(self.env_steps),
            "env_steps_per_second": step_env_steps / seconds,
            "policy_entropy": float(self.policy.entropy().detach()),
            "policy_loss": float(np.mean([u["policy_loss"] for u in updates])),
            "value_loss": float(np.mean([u["value_loss"] for u in updates])),
            "clip_fraction": float(np.mean([u["clip_fraction"] for u in updates])),
            "max_weight_change": float(max(u["weight_change"] for u in updates)),
            "gradient_norm": float(np.mean([u["gradient_norm"] for u in updates])),
            "distance_from_init": self._distance_from_initial(),
            **self._weight_metrics(),
            **probe,
        }
        if len(frictions):
            metrics["friction"] = float(frictions[0])  # env 0's; every env follows the same row
        replaced = [
            i.replaced_total for i in self.learner.policy_interventions + self.learner.value_interventions
        ]
        if replaced:
            metrics["replaced_units"] = float(sum(replaced))
        return metrics

    @torch.no_grad()
    def _distance_from_initial(self) -> float:
        """‖θ − θ₀‖₂ over both nets and the log-std (docs/methods.md, "Metrics")."""
        params = (*self.policy.parameters(), *self.value.parameters())
        squares = sum(
            float((p - p0).double().pow(2).sum()) for p, p0 in zip(params, self.initial, strict=True)
        )
        return math.sqrt(squares)

    def _stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.obs_stats is None:
            return None
        return self.obs_stats.mean.float().numpy(), self.obs_stats.var.float().numpy()

    def _learn(self, rollouts, probe: bool = True) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
        """Join the runners' rollouts (global env order), measure the acting policy (`probe`), update."""

        def joined(name: str) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([getattr(r, name) for r in rollouts], axis=1))

        obs_raw = joined("obs")
        last_raw = torch.from_numpy(np.concatenate([r.last_obs for r in rollouts], axis=0))
        obs, last_obs = obs_raw, last_raw
        if self.obs_stats is not None:
            stats = tuple(torch.from_numpy(s) for s in self._stats())
            obs, last_obs = normalize(obs_raw, *stats, OBS_CLIP), normalize(last_raw, *stats, OBS_CLIP)
        rewards, dones = joined("rewards"), joined("dones")
        if self.reward_scaler is not None:
            rewards = self.reward_scaler(rewards, dones)
        dev = self.device
        measured, recent, features = self._probe(obs.to(dev)) if probe else ({}, None, None)
        batch = self.learner.batch(
            obs.to(dev),
            joined("actions").to(dev),
            joined("log_probs").to(dev),
            rewards.to(dev),
            dones.to(dev),
            last_obs.to(dev),
        )
        update = self.learner.update(batch)
        if recent is not None:  # how much the update moved the acting policy's features of its inputs
            with torch.no_grad():
                after = self.policy(recent)[1][-1]
            measured["feature_churn"] = float(feature_churn(features.unsqueeze(0), after.unsqueeze(0))[0])
        return obs_raw, update, measured

    @torch.no_grad()
    def _probe(self, obs: torch.Tensor) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Dormant policy units and the stable rank of its last hidden layer on the last 1,000
        observations the policy acted on (spec/problems.md §5, Logged), and the fraction of active
        units there; with those observations and their last hidden features, for the churn."""
        steps, envs = obs.shape[:2]
        rows = math.ceil(PROBE_STEPS / envs)
        recent = obs[-rows:].reshape(-1, obs.shape[-1])[-PROBE_STEPS:]
        _, hidden = self.policy(recent)
        active = torch.cat([(h > 0).float().mean(dim=0) for h in hidden])
        width = hidden[-1].shape[1]
        stable = rank_summaries(hidden[-1])["abs_approximate_rank"]
        metrics = {
            "dormant_units_percent": 100.0 * float((active <= DORMANT_FRACTION).float().mean()),
            "stable_rank": stable,
            "stable_rank_percent": 100.0 * stable / width,
            "active_fraction": float(active_fraction([h.unsqueeze(0) for h in hidden])[0]),
        }
        return metrics, recent, hidden[-1].clone()

    def _weight_metrics(self) -> dict[str, float]:
        metrics = {}
        for name, net in (("policy", self.policy), ("value", self.value)):
            for index, weight in enumerate(net.weight_matrices()):
                metrics[f"{name}_weight_magnitude_layer{index}"] = float(weight.detach().abs().mean())
        matrices = self.policy.weight_matrices()
        metrics["weight_magnitude"] = sum(float(w.detach().abs().sum()) for w in matrices) / sum(
            w.numel() for w in matrices
        )
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "env_steps": self.env_steps,
            "learner": self.learner.state_dict(),
            "intervention_generator": self.intervention_generator.get_state(),
            "obs_stats": None if self.obs_stats is None else self.obs_stats.state_dict(),
            "reward_scaler": None if self.reward_scaler is None else self.reward_scaler.state_dict(),
            "runners": self.runners.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.env_steps = int(state["env_steps"])
        self.learner.load_state_dict(state["learner"])
        self.intervention_generator.set_state(state["intervention_generator"].cpu())
        if self.obs_stats is not None:
            self.obs_stats.load_state_dict(state["obs_stats"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.runners.load_state_dict(state["runners"])

    def close(self) -> None:
        self.runners.close()


def config_from_trial(trial: dict[str, Any]) -> PPOExperimentConfig:
    """The experiment config of one trial of a validated sweep (`lop_ray.problems.rl`)."""
    settings = trial["problem_settings"]
    network = trial["network"]
    hyper = dict(trial["hyperparameters"])
    algorithm = trial["algorithm"]
    policy_cbp = value_cbp = redo = None
    if algorithm == "cbp":
        shared = {
            key: hyper[key]
            for key in (
                "replacement_rate",
                "maturity_threshold",
                "decay_rate",
                "init",
                "accumulate",
                "bias_correction",
                "reset_optimizer_state",
            )
        }
        policy_cbp = CBPConfig(util_type=hyper["util_type"], **shared)
        value_cbp = CBPConfig(util_type=hyper["value_util_type"], **shared)
    elif algorithm == "redo":
        redo = ReDoConfig(
            threshold=hyper["threshold"],
            reset_period=hyper["reset_period"],
            init=hyper["init"],
            reset_optimizer_state=hyper["reset_optimizer_state"],
        )
    return PPOExperimentConfig(
        seed=int(trial["seed"]),
        env=settings["env"],
        ant_observation=settings["ant_observation"],
        batch_size=settings["batch_size"],
        iterations_per_step=settings["iterations_per_step"],
        num_runners=max(settings["env_runners"], 1),
        envs_per_runner=settings["envs_per_runner"],
        hidden=(network["hidden_units"],) * network["hidden_layers"],
        activation=network["activation"],
        ppo=PPOConfig(
            gamma=settings["gamma"],
            gae_lambda=settings["gae_lambda"],
            clip=settings["clip"],
            epochs=settings["epochs"],
            minibatch_size=settings["minibatch_size"],
            value_coef=settings["value_coef"],
            entropy_coef=settings["entropy_coef"],
            max_grad_norm=settings["max_grad_norm"],
        ),
        step_size=hyper["step_size"],
        beta1=hyper["beta1"],
        beta2=hyper["beta2"],
        eps=hyper["eps"],
        weight_decay=hyper.get("weight_decay", 0.0),
        policy_cbp=policy_cbp,
        value_cbp=value_cbp,
        redo=redo,
        normalize_observations=settings["normalize_observations"],
        normalize_rewards=settings["normalize_rewards"],
        friction_change_every=settings["friction_change_every"],
        max_episode_steps=settings["max_episode_steps"],
    )
