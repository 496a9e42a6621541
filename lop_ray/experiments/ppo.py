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
from collections.abc import Sequence
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
from lop_ray.experiments.learner import METHODS
from lop_ray.metrics import rank_summaries
from lop_ray.nets.policy import GaussianPolicy, ValueNetwork
from lop_ray.plasticity_metrics import active_fraction, feature_churn, per_seed_norm
from lop_ray.rl.envs import MAX_EPISODE_STEPS
from lop_ray.rl.friction import CHANGE_EVERY
from lop_ray.rl.runner import OBS_CLIP, LocalRunners, RunnerSpec, env_dims, policy_weights, split_slots

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
    # each seed's envs; None: num_runners × envs_per_runner (one seed's envs spread over the runners)
    envs_per_seed: int | None = None
    env_threads: int = 1  # threads stepping each runner's envs
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    layer_norm: bool = False  # both nets' hidden pre-activations normalised (Lyle et al. 2024)
    crelu: bool = False  # both nets' hidden units CReLUs (Abbas et al. 2023)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    step_size: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    policy_cbp: CBPConfig | None = None
    value_cbp: CBPConfig | None = None
    redo: ReDoConfig | None = None
    # a method since the paper (docs/methods.md), on both nets: LayerResetConfig, ParsevalConfig or
    # SNRConfig (`lop_ray.experiments.learner.METHODS`); and L2 Init's λ
    method: Any = None
    l2_init: float = 0.0
    normalize_observations: bool = False
    normalize_rewards: bool = False
    friction_change_every: int = CHANGE_EVERY
    max_episode_steps: int = MAX_EPISODE_STEPS

    @property
    def total_envs(self) -> int:
        """Envs of each seed (all seeds' envs together are spread evenly over the runners)."""
        return (
            self.envs_per_seed if self.envs_per_seed is not None else self.num_runners * self.envs_per_runner
        )

    @property
    def steps_per_env(self) -> int:
        """Steps of each env per iteration."""
        if self.batch_size % self.total_envs:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of the {self.total_envs} envs")
        return self.batch_size // self.total_envs

    def runner_specs(self, seeds: Sequence[int] | None = None) -> list[RunnerSpec]:
        """The runners of a run of `seeds` (default: the config's one): the seeds' envs in seed-major
        order, cut into `num_runners` equal blocks."""
        seeds = tuple(int(s) for s in (seeds if seeds is not None else [self.seed]))
        return [
            RunnerSpec(
                env=self.env,
                seeds=seeds,
                slots=slots,
                total_envs=self.total_envs,
                ant_observation=self.ant_observation,
                hidden=self.hidden,
                activation=self.activation,
                friction_change_every=self.friction_change_every,
                max_episode_steps=self.max_episode_steps,
                threads=self.env_threads,
            )
            for slots in split_slots(len(seeds), self.total_envs, self.num_runners)
        ]


class PPOExperiment:
    """One run of S seeds (`seeds`; default the config's one): `run_step()` runs
    `iterations_per_step` PPO iterations of every seed and returns each seed's metrics, in order.

    Every seed has its own envs, friction schedule, normalisers and generators; the networks, Adam
    and the interventions hold all seeds on their seed axis, so acting is one call per env step and
    the update one pass per minibatch for all of them, and each seed's numbers are those it gets
    alone (tests/test_ppo_seed_batched.py)."""

    def __init__(
        self,
        config: PPOExperimentConfig,
        runners=None,
        device: str | torch.device = "cpu",
        seeds: Sequence[int] | None = None,
    ) -> None:
        self.config = config
        self.seeds = [config.seed] if seeds is None else [int(s) for s in seeds]
        self.device = torch.device(device)
        obs_dim, action_dim = env_dims(config.env, config.ant_observation)
        inits = [generator(s, LEARNER, INIT) for s in self.seeds]  # CPU draws: the same nets on any device
        options = {"layer_norm": config.layer_norm, "crelu": config.crelu}
        self.policy = GaussianPolicy(obs_dim, action_dim, config.hidden, config.activation, inits, **options)
        self.policy.to(self.device)
        self.value = ValueNetwork(obs_dim, config.hidden, config.activation, inits, **options).to(self.device)
        optimizer = self._optimizer([*self.policy.parameters(), *self.value.parameters()])
        # on the learner's device (ReDo draws there; CBP draws on the CPU twin of each)
        self.intervention_generators = [
            generator(s, LEARNER, INTERVENTIONS, device=self.device) for s in self.seeds
        ]
        policy_interventions, value_interventions = self._interventions(optimizer)
        self.learner = PPOLearner(
            self.policy,
            self.value,
            optimizer,
            config.ppo,
            [generator(s, LEARNER, MINIBATCHES) for s in self.seeds],
            policy_interventions,
            value_interventions,
        )
        self.obs_stats = (
            [RunningMeanStd((obs_dim,)) for _ in self.seeds] if config.normalize_observations else None
        )
        self.reward_scalers = (
            [RewardScaler(config.total_envs, config.ppo.gamma) for _ in self.seeds]
            if config.normalize_rewards
            else None
        )
        self.runners = runners if runners is not None else LocalRunners(config.runner_specs(self.seeds))
        # θ₀ of the distance metric: the nets as built, a function of the seed (a resumed run, which
        # rebuilds them before loading its checkpoint, holds the same)
        self.initial = [p.detach().clone() for p in (*self.policy.parameters(), *self.value.parameters())]
        self.steps_done = 0
        self.env_steps = 0

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """One Adam over both nets and the log-std, L2 coupled. Our per-element-step Adam where an
        intervention restarts the Adam state of single units; otherwise PyTorch's own (the
        original's), whose single step count per tensor saves a bias-correction pass per step (every
        seed takes the same number of steps, so one count serves them all)."""
        cfg = self.config
        configs = (cfg.policy_cbp, cfg.value_cbp, cfg.redo, cfg.method)
        resets = [getattr(c, "reset_optimizer_state", False) for c in configs if c is not None]
        if any(resets) or cfg.l2_init:
            return make_optimizer(
                params,
                "adam",
                cfg.step_size,
                cfg.weight_decay,
                beta1=cfg.beta1,
                beta2=cfg.beta2,
                eps=cfg.eps,
                l2_init=cfg.l2_init,
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
        cfg, gens = self.config, self.intervention_generators
        policy, value = [], []
        # both draw new weights from each seed's one intervention generator, in turn (never ahead),
        # and their per-step draws from counter streams of keys of their own
        keys = seed_keys(self.seeds, self.device)
        if cfg.policy_cbp is not None:
            policy.append(
                ContinualBackprop(
                    self.policy.unit_groups(), optimizer, cfg.policy_cbp, gens, keys, draw_ahead=False
                )
            )
        if cfg.value_cbp is not None:
            value.append(
                ContinualBackprop(
                    self.value.unit_groups(), optimizer, cfg.value_cbp, gens, keys ^ 1, draw_ahead=False
                )
            )
        if cfg.redo is not None:
            policy.append(ReDo(self.policy.unit_groups(), optimizer, cfg.redo, gens))
            value.append(ReDo(self.value.unit_groups(), optimizer, cfg.redo, gens))
        if cfg.method is not None:  # written once for every learner: attached to each net in turn
            method = next(m for m in METHODS.values() if isinstance(cfg.method, m.config))
            for stream, (net, attached) in enumerate(((self.policy, policy), (self.value, value))):
                attached.append(
                    method.attach(net, optimizer, cfg.method, self.seeds, self.device, keys, stream)
                )
        return policy, value

    def run_step(self) -> list[dict[str, float]]:
        start = time.perf_counter()
        num_seeds = len(self.seeds)
        returns: list[list[float]] = [[] for _ in self.seeds]
        lengths: list[list[int]] = [[] for _ in self.seeds]
        updates = []
        frictions = np.zeros(0)
        probe: list[dict[str, float]] = [{} for _ in self.seeds]
        for iteration in range(self.config.iterations_per_step):
            last = iteration == self.config.iterations_per_step - 1
            rollouts = self.runners.collect(
                policy_weights(self.policy), self.config.steps_per_env, self._stats()
            )
            obs, batch_stats, measured = self._learn(rollouts, probe=last)
            probe = measured or probe
            updates.append(batch_stats)
            for rollout in rollouts:
                for k, episode_return, length in zip(
                    rollout.episode_seeds, rollout.episode_returns, rollout.episode_lengths, strict=True
                ):
                    returns[k].append(float(episode_return))
                    lengths[k].append(int(length))
            frictions = np.concatenate([r.frictions for r in rollouts])
            if self.obs_stats is not None:  # after the update: the batch was learnt as it was acted on
                for k, stats in enumerate(self.obs_stats):
                    stats.update(obs[:, k].reshape(-1, obs.shape[-1]))
        seconds = time.perf_counter() - start
        step_env_steps = self.config.iterations_per_step * self.config.batch_size
        self.env_steps += step_env_steps
        self.steps_done += 1
        entropy = self.policy.entropy().detach().tolist()
        distance = self._distance_from_initial()
        weights = self._weight_metrics()
        replaced = [
            i.replaced_total.tolist()
            for i in self.learner.policy_interventions + self.learner.value_interventions
            if hasattr(i, "replaced_total")  # it replaces units or layers
        ]
        per_seed = []
        for k in range(num_seeds):

            def over_updates(name: str, reduce=np.mean, k=k) -> float:
                return float(reduce([u[name][k] for u in updates]))

            metrics = {
                "episodic_return": float(np.mean(returns[k])) if returns[k] else math.nan,
                "episodes": float(len(returns[k])),
                "episode_length": float(np.mean(lengths[k])) if lengths[k] else math.nan,
                "env_steps": float(self.env_steps),
                # every seed's steps: the rate of the run (the seeds advance together)
                "env_steps_per_second": num_seeds * step_env_steps / seconds,
                "policy_entropy": float(entropy[k]),
                "policy_loss": over_updates("policy_loss"),
                "value_loss": over_updates("value_loss"),
                "clip_fraction": over_updates("clip_fraction"),
                "max_weight_change": over_updates("weight_change", max),
                "gradient_norm": over_updates("gradient_norm"),
                "distance_from_init": distance[k],
                **weights[k],
                **probe[k],
            }
            if len(frictions):  # env 0's of the seed; every env of a seed follows the same row
                metrics["friction"] = float(frictions[k * self.config.total_envs])
            if replaced:
                metrics["replaced_units"] = float(sum(r[k] for r in replaced))
            per_seed.append(metrics)
        return per_seed

    @torch.no_grad()
    def _distance_from_initial(self) -> list[float]:
        """Each seed's ‖θ − θ₀‖₂ over both nets and the log-std (docs/methods.md, "Metrics")."""
        params = (*self.policy.parameters(), *self.value.parameters())
        return per_seed_norm([p - p0 for p, p0 in zip(params, self.initial, strict=True)]).tolist()

    def _stats(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        if self.obs_stats is None:
            return None
        return [(s.mean.float().numpy(), s.var.float().numpy()) for s in self.obs_stats]

    def _learn(
        self, rollouts, probe: bool = True
    ) -> tuple[torch.Tensor, dict[str, list[float]], list[dict[str, float]]]:
        """Join the runners' rollouts (seed-major slot order) into (time, seed, env, ...), measure the
        acting policy (`probe`), update."""
        seeds, envs = len(self.seeds), self.config.total_envs

        def joined(name: str) -> torch.Tensor:
            x = np.concatenate([getattr(r, name) for r in rollouts], axis=1)
            return torch.from_numpy(x.reshape(x.shape[0], seeds, envs, *x.shape[2:]))

        obs_raw = joined("obs")
        last_raw = torch.from_numpy(np.concatenate([r.last_obs for r in rollouts], axis=0)).reshape(
            seeds, envs, -1
        )
        obs, last_obs = obs_raw, last_raw
        if self.obs_stats is not None:
            stats = self._stats()
            mean, var = (torch.stack([torch.from_numpy(s[i]) for s in stats]) for i in (0, 1))
            obs = normalize(obs_raw, mean.unsqueeze(1), var.unsqueeze(1), OBS_CLIP)
            last_obs = normalize(last_raw, mean.unsqueeze(1), var.unsqueeze(1), OBS_CLIP)
        rewards, dones = joined("rewards"), joined("dones")
        if self.reward_scalers is not None:
            rewards = torch.stack(
                [scaler(rewards[:, k], dones[:, k]) for k, scaler in enumerate(self.reward_scalers)], dim=1
            )
        dev = self.device
        obs = obs.to(dev)
        measured, recent, features = self._probe(obs) if probe else ([], None, None)
        batch = self.learner.batch(
            obs,
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
            churn = feature_churn(features, after).tolist()
            for metrics, value in zip(measured, churn, strict=True):
                metrics["feature_churn"] = float(value)
        return obs_raw, update, measured

    @torch.no_grad()
    def _probe(self, obs: torch.Tensor) -> tuple[list[dict[str, float]], torch.Tensor, torch.Tensor]:
        """Each seed's dormant policy units and the stable rank of its last hidden layer on the last
        1,000 observations its policy acted on (spec/problems.md §5, Logged), and the fraction of
        active units there; with those observations (seed, 1000, obs) and their last hidden
        features, for the churn."""
        steps, seeds, envs = obs.shape[:3]
        rows = math.ceil(PROBE_STEPS / envs)
        recent = obs[-rows:].transpose(0, 1).reshape(seeds, -1, obs.shape[-1])[:, -PROBE_STEPS:]
        _, hidden = self.policy(recent)
        active = torch.cat([(h > 0).float().mean(dim=1) for h in hidden], dim=1)  # (seed, units)
        width = hidden[-1].shape[2]
        fractions = active_fraction(hidden).tolist()
        measured = []
        for k in range(seeds):
            stable = rank_summaries(hidden[-1][k])["abs_approximate_rank"]
            measured.append(
                {
                    "dormant_units_percent": 100.0 * float((active[k] <= DORMANT_FRACTION).float().mean()),
                    "stable_rank": stable,
                    "stable_rank_percent": 100.0 * stable / width,
                    "active_fraction": float(fractions[k]),
                }
            )
        return measured, recent, hidden[-1].clone()

    def _weight_metrics(self) -> list[dict[str, float]]:
        """Each seed's mean |weight| per layer of both nets, and over the policy's weights."""
        seeds = len(self.seeds)
        metrics: list[dict[str, float]] = [{} for _ in range(seeds)]
        for name, net in (("policy", self.policy), ("value", self.value)):
            for index, weight in enumerate(net.weight_matrices()):
                for k in range(seeds):  # seed by seed: see plasticity_metrics.per_seed_norm
                    metrics[k][f"{name}_weight_magnitude_layer{index}"] = float(
                        weight[k].detach().abs().mean()
                    )
        matrices = self.policy.weight_matrices()
        count = sum(w[0].numel() for w in matrices)
        for k in range(seeds):
            metrics[k]["weight_magnitude"] = sum(float(w[k].detach().abs().sum()) for w in matrices) / count
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "steps_done": self.steps_done,
            "env_steps": self.env_steps,
            "learner": self.learner.state_dict(),
            "intervention_generators": [g.get_state() for g in self.intervention_generators],
            "obs_stats": None if self.obs_stats is None else [s.state_dict() for s in self.obs_stats],
            "reward_scalers": None
            if self.reward_scalers is None
            else [s.state_dict() for s in self.reward_scalers],
            "runners": self.runners.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["seeds"]) != self.seeds:
            raise ValueError(f"checkpoint is of seeds {state['seeds']}, this run has {self.seeds}")
        self.steps_done = int(state["steps_done"])
        self.env_steps = int(state["env_steps"])
        self.learner.load_state_dict(state["learner"])
        for g, saved in zip(self.intervention_generators, state["intervention_generators"], strict=True):
            g.set_state(saved.cpu())
        if self.obs_stats is not None:
            for stats, saved in zip(self.obs_stats, state["obs_stats"], strict=True):
                stats.load_state_dict(saved)
        if self.reward_scalers is not None:
            for scaler, saved in zip(self.reward_scalers, state["reward_scalers"], strict=True):
                scaler.load_state_dict(saved)
        self.runners.load_state_dict(state["runners"])

    def close(self) -> None:
        self.runners.close()


def config_from_trial(trial: dict[str, Any]) -> PPOExperimentConfig:
    """The experiment config of one trial of a validated sweep (`lop_ray.problems.rl`)."""
    settings = trial["problem_settings"]
    network = trial["network"]
    hyper = dict(trial["hyperparameters"])
    algorithm = trial["algorithm"]
    policy_cbp = value_cbp = redo = method = None
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
    elif algorithm in METHODS:  # a method since the paper, on both nets
        fields = METHODS[algorithm].config.__dataclass_fields__
        method = METHODS[algorithm].config(**{k: hyper.pop(k) for k in list(hyper) if k in fields})
    return PPOExperimentConfig(
        seed=int(trial["seed"]),
        env=settings["env"],
        ant_observation=settings["ant_observation"],
        batch_size=settings["batch_size"],
        iterations_per_step=settings["iterations_per_step"],
        num_runners=max(settings["env_runners"], 1),
        envs_per_runner=settings["envs_per_runner"],
        envs_per_seed=settings.get("envs_per_seed"),
        env_threads=settings.get("env_threads", 1),
        hidden=(network["hidden_units"],) * network["hidden_layers"],
        activation=network["activation"],
        layer_norm=network.get("layer_norm", False),
        crelu=network.get("crelu", False),
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
        method=method,
        l2_init=hyper.get("l2_init", 0.0),
        normalize_observations=settings["normalize_observations"],
        normalize_rewards=settings["normalize_rewards"],
        friction_change_every=settings["friction_change_every"],
        max_episode_steps=settings["max_episode_steps"],
    )
