"""GRPO for the embedded planner (paper §III-C(b), stage 2), on the samples SFT gets wrong.

For each sample, `num_generations` completions are sampled from the current policy under the
same `PlanConstraint` as inference (numpy, at `temperature`); the shared reward callables score
them (default `format_reward` + `answer_reward`; the ablations are `reward_funcs=("answer",)`
and `("format", "binary_answer")`). Advantages are group-normalised, A_i = (r_i - mean) /
(std + delta); the loss is the PPO-style clipped ratio (epsilon) plus `beta` times the k3 KL
estimate to the frozen SFT model, log-probabilities taken under the constraint, averaged per
completion and then over completions (trl's `loss_type="grpo"`).

A group whose rewards are all equal has zero advantage everywhere: it is skipped and counted.
GRPO from a random model therefore gets no signal: with constrained sampling every completion
is well-formed (equal format rewards) and a random policy almost never names the reference set
(chance about 1/n_live^2 per completion for two tools), so every group is skipped. SFT first.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from revision.errors import ConfigError, InputError
from revision.planner._base import PlannerSample
from revision.planner._train import (
    TrainConfig,
    Trainer,
    TrainOutput,
    batch_indices,
    greedy_ids,
    one_blas_thread,
    pad_tokens,
)
from revision.planner.infer import NumpyDecoder, PlanConstraint, prefix_arrays, tools_of
from revision.planner.model import PlannerModel, prefix_tensors
from revision.planner.rewards import REWARDS, Reward, total_reward
from revision.planner.sft import check_answers
from revision.planner.tokenizer import BOS, THINK, PlanTokenizer

__all__ = ["GRPOConfig", "GRPOTrainer", "TrainOutput", "hard_samples"]


@dataclass
class GRPOConfig(TrainConfig):
    num_train_epochs: int = 1
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.0
    num_generations: int = 8
    prompts_per_step: int = 4  # groups per optimizer step
    temperature: float = 1.0
    beta: float = 0.04  # KL weight to the SFT model
    epsilon: float = 0.2  # ratio clip
    delta: float = 1e-4  # in A = (r - mean) / (std + delta)
    num_iterations: int = 1  # optimizer passes over one batch of samples (PPO epochs)
    reward_funcs: tuple[str | Callable, ...] = ("format", "answer")
    only_hard: bool = True  # train on the samples the SFT model answers wrongly

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            raise ConfigError(
                f"num_generations={self.num_generations}: group-normalised advantages need at "
                "least 2 completions per sample (the paper uses 8)"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature}: GRPO samples; use > 0 (e.g. 1.0)")
        if self.beta < 0 or not 0 < self.epsilon < 1 or self.delta <= 0:
            raise ConfigError(
                f"beta={self.beta}, epsilon={self.epsilon}, delta={self.delta}: need beta >= 0, "
                "0 < epsilon < 1 and delta > 0 (defaults: 0.04, 0.2, 1e-4)"
            )
        if self.prompts_per_step < 1 or self.num_iterations < 1:
            raise ConfigError("prompts_per_step and num_iterations must be at least 1")
        self.rewards()  # fail now on an unknown name

    def rewards(self) -> list[Reward]:
        """The reward callables; names refer to `revision.planner.rewards.REWARDS`."""
        out = []
        for fn in self.reward_funcs:
            if callable(fn):
                out.append(fn)
            elif fn in REWARDS:
                out.append(REWARDS[fn])
            else:
                raise ConfigError(f"unknown reward {fn!r}; valid: {sorted(REWARDS)}")
        if not out:
            raise ConfigError(f"reward_funcs is empty; pick from {sorted(REWARDS)}")
        return out

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["reward_funcs"] = [f if isinstance(f, str) else f.__name__ for f in self.reward_funcs]
        return out


def hard_samples(model: PlannerModel, samples: Sequence[PlannerSample]) -> list[PlannerSample]:
    """The samples whose greedy answer is not exactly the reference sequence."""
    return [
        s
        for s, ids in zip(samples, greedy_ids(model, list(samples)), strict=True)
        if tools_of(ids) != [int(t) for t in s.answer]
    ]


def _log_probs(
    model: PlannerModel,
    prefix: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    allowed: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Log-probabilities (B, n) of `tokens[:, 2:]` under the constrained, tempered softmax."""
    logits = model(prefix, tokens)[:, 1:-1] / temperature
    logits = logits.masked_fill(~allowed, -math.inf)
    return torch.log_softmax(logits, -1).gather(-1, tokens[:, 2:, None])[..., 0]


class GRPOTrainer(Trainer):
    """`model` is the SFT model: it is copied, frozen, as the KL reference, and the policy
    starts from it (on `resume`, from the checkpoint; pass the same SFT model again)."""

    kind = "grpo"
    curves = ("reward", "loss", "kl", "skipped_groups")

    def __init__(
        self,
        model: PlannerModel,
        tokenizer: PlanTokenizer,
        train_samples: Sequence[PlannerSample],
        args: GRPOConfig,
        toollist_digest: str = "",
    ):
        super().__init__(model, tokenizer, args, toollist_digest)
        check_answers(train_samples, model.config.max_answer)
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.samples = hard_samples(model, train_samples) if args.only_hard else list(train_samples)
        if not self.samples:
            raise InputError(
                f"none of the {len(train_samples)} samples is hard: the SFT model already answers "
                "each exactly; there is nothing for GRPO to learn (or set only_hard=False)"
            )
        self.n_given = len(train_samples)
        self.reward_fns = args.rewards()
        self._groups_run = 0

    @property
    def total_steps(self) -> int:
        if self.args.max_steps > 0:
            return self.args.max_steps
        return self.args.num_train_epochs * math.ceil(
            len(self.samples) / self.args.prompts_per_step
        )

    def _sample(self, batch: list[PlannerSample], step: int) -> list[list[int]]:
        """`num_generations` constrained samples per sample, rows grouped by sample."""
        g, cfg = self.args.num_generations, self.model.config
        decoder = NumpyDecoder(self.model.numpy_weights(), cfg)
        features = prefix_arrays([s.features for s in batch], cfg)
        prefix = {k: np.repeat(v, g, axis=0) for k, v in features.items()}
        constraints = [PlanConstraint.for_config(cfg, s.live) for s in batch for _ in range(g)]
        rng = np.random.default_rng([self.args.seed, step])
        with one_blas_thread():
            return decoder.generate(prefix, constraints, self.args.temperature, rng)

    def _step(self, step: int) -> dict:
        args, g = self.args, self.args.num_generations
        picked = batch_indices(step, len(self.samples), args.prompts_per_step, args.seed)
        batch = [self.samples[i] for i in picked]
        generated = self._sample(batch, step)
        rewards = np.array(
            total_reward(
                [self.tokenizer.decode([BOS, THINK, *ids]) for ids in generated],
                self.reward_fns,
                answer=[s.answer for s in batch for _ in range(g)],
                live=[s.live for s in batch for _ in range(g)],
            )
        ).reshape(len(batch), g)
        keep = [i for i in range(len(batch)) if rewards[i].max() > rewards[i].min()]
        self._groups_run += len(batch)
        record = {
            "reward": float(rewards.mean()),
            "groups": len(batch),
            "skipped_groups": len(batch) - len(keep),
        }
        if keep:
            std = rewards.std(1, ddof=1, keepdims=True)  # unbiased, as trl
            advantages = (rewards - rewards.mean(1, keepdims=True)) / (std + args.delta)
            record |= self._update(
                [batch[i] for i in keep],
                [generated[i * g : (i + 1) * g] for i in keep],
                advantages[keep],
            )
        return record

    def _update(
        self, batch: list[PlannerSample], groups: list[list[list[int]]], advantages: np.ndarray
    ) -> dict:
        """Clipped policy-gradient steps on the kept groups; returns loss and mean KL."""
        args, cfg, g = self.args, self.model.config, self.args.num_generations
        seqs = [ids for group in groups for ids in group]
        tokens = pad_tokens([[BOS, THINK, *ids] for ids in seqs])
        n = tokens.shape[1] - 2
        # the constraint at every generated position; padding positions allow all (no NaN)
        mask = np.ones((len(seqs), n, cfg.vocab_size), bool)
        valid = torch.zeros(len(seqs), n)
        for b, ids in enumerate(seqs):
            constraint = PlanConstraint.for_config(cfg, batch[b // g].live)
            for t in range(len(ids)):
                mask[b, t] = constraint.allowed(ids[:t])
            valid[b, : len(ids)] = 1.0
        allowed = torch.from_numpy(mask)
        adv = torch.tensor(advantages, dtype=torch.float32).reshape(-1, 1)
        features = prefix_tensors([s.features for s in batch], cfg)
        prefix = {k: v.repeat_interleave(g, 0) for k, v in features.items()}
        with torch.no_grad():
            ref = _log_probs(self.reference, prefix, tokens, allowed, args.temperature)
        old = None
        for _ in range(args.num_iterations):
            logp = _log_probs(self.model, prefix, tokens, allowed, args.temperature)
            old = logp.detach() if old is None else old
            ratio = torch.exp(logp - old)
            clipped = torch.clamp(ratio, 1 - args.epsilon, 1 + args.epsilon)
            kl = torch.exp(ref - logp) - (ref - logp) - 1
            per_token = -torch.min(ratio * adv, clipped * adv) + args.beta * kl
            loss = ((per_token * valid).sum(1) / valid.sum(1)).mean()
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.optimizer.step()
        return {"loss": loss.item(), "kl": float((kl.detach() * valid).sum() / valid.sum())}

    def _summary(self, steps: int, seconds: float) -> dict:
        rewards = [row["reward"] for row in self.history]
        return {
            "samples_given": self.n_given,
            "samples_trained": len(self.samples),
            "groups": sum(row["groups"] for row in self.history),
            "skipped_groups": sum(row["skipped_groups"] for row in self.history),
            "s_per_group": round(seconds / self._groups_run, 3) if self._groups_run else None,
            "reward_first": rewards[0] if rewards else None,
            "reward_last": rewards[-1] if rewards else None,
            "reward_funcs": ", ".join(self.args.to_dict()["reward_funcs"]),
        }
