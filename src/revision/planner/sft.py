"""Supervised fine-tuning of the embedded planner (paper §III-C(b), stage 1).

Next-token cross entropy on `<bos> <think> thinking </think> (i) (j) <eos>` given the soft-token
prefix; AdamW with warmup and cosine decay. SFT comes before GRPO: it teaches the format and a
first answer, which GRPO then sharpens on the samples SFT still gets wrong.

    tokenizer = PlanTokenizer.train(s.thinking for s in samples)
    model = PlannerModel(PlannerConfig.for_tokenizer(tokenizer))
    SFTTrainer(model, tokenizer, samples, SFTConfig("runs/sft"), toollist_digest).train()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from revision.errors import ConfigError, InputError
from revision.planner._base import PlannerSample
from revision.planner._train import (
    TrainConfig,
    Trainer,
    TrainOutput,
    batch_indices,
    pad_tokens,
)
from revision.planner.model import PlannerModel, prefix_tensors
from revision.planner.tokenizer import PlanTokenizer

__all__ = ["SFTConfig", "SFTTrainer", "TrainOutput"]


@dataclass
class SFTConfig(TrainConfig):
    batch_size: int = 32
    answer_weight: float = 1.0  # loss weight of the plan's tokens against the thinking's
    dropout: float = 0.0  # on the soft tokens and the residual branches, training only
    drop_results: float = 0.0  # share of result tokens hidden per sample (augmentation)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: must be at least 1")
        if not (0 <= self.dropout < 1 and 0 <= self.drop_results < 1):
            raise ConfigError(
                f"dropout={self.dropout}, drop_results={self.drop_results}: use shares in [0, 1)"
            )
        if self.answer_weight <= 0:
            raise ConfigError(f"answer_weight={self.answer_weight}: must be positive")


def check_answers(samples: Sequence[PlannerSample], max_answer: int) -> None:
    """Reject samples whose reference answer the model could never write."""
    for s in samples:
        if len(s.answer) > max_answer:
            raise InputError(
                f"sample {s.request_id}: its answer names {len(s.answer)} tools, the model "
                f"allows max_answer={max_answer}; raise PlannerConfig.max_answer"
            )


class SFTTrainer(Trainer):
    kind = "sft"
    curves = ("loss", "lr")

    def __init__(
        self,
        model: PlannerModel,
        tokenizer: PlanTokenizer,
        train_samples: Sequence[PlannerSample],
        args: SFTConfig,
        toollist_digest: str = "",
    ):
        super().__init__(model, tokenizer, args, toollist_digest)
        if not train_samples:
            raise InputError("SFT needs at least one training sample")
        self.samples = list(train_samples)
        check_answers(self.samples, model.config.max_answer)
        self._ids = [
            tokenizer.encode_completion(s.thinking, s.answer, model.config.max_thinking)
            for s in self.samples
        ]
        self._seen = 0

    @property
    def total_steps(self) -> int:
        if self.args.max_steps > 0:
            return self.args.max_steps
        return self.args.num_train_epochs * math.ceil(len(self.samples) / self.args.batch_size)

    def _step(self, step: int) -> dict:
        idx = batch_indices(step, len(self.samples), self.args.batch_size, self.args.seed)
        prefix = prefix_tensors([self.samples[i].features for i in idx], self.model.config)
        if self.args.drop_results:
            gen = torch.Generator().manual_seed(self.args.seed * 1_000_003 + step)
            keep = torch.rand(prefix["result_mask"].shape, generator=gen) >= self.args.drop_results
            keep[:, 0] = True  # the first result stays: it is what the photo matched
            prefix["result_mask"] = prefix["result_mask"] & keep
        tokens = pad_tokens([self._ids[i] for i in idx])
        self.model.dropout = self.args.dropout
        try:
            loss = self.model.loss(prefix, tokens, self.args.answer_weight)
        finally:
            self.model.dropout = 0.0
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self._seen += len(idx)
        return {"loss": loss.item()}

    def _summary(self, steps: int, seconds: float) -> dict:
        return {
            "samples": len(self.samples),
            "samples_per_s": round(self._seen / seconds, 1) if seconds else None,
        }
