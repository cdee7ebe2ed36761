"""Train the embedded planner end to end: tokenizer, SFT, then GRPO on the hard samples.

GRPO from a random model gets no signal (every group of completions earns the same reward), so
SFT comes first; GRPO then samples `num_generations` completions per training request the SFT
model gets wrong, and pushes towards the better ones (`revision.planner.grpo`). A share of
requests the SFT model already gets right joins the RL set (`easy_share`), so that RL on the
hard ones does not unlearn the easy ones. The result is one checkpoint folder per stage under
`out/`, `out/sft` and `out/grpo`, each with its report (curves, HTML); `out/final` points at
the one to use.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from revision.errors import InputError
from revision.planner._base import PlannerSample
from revision.planner.checkpoint import final_checkpoint, latest_checkpoint  # noqa: F401
from revision.planner.grpo import GRPOConfig, GRPOTrainer, hard_samples
from revision.planner.model import PlannerConfig, PlannerModel
from revision.planner.sft import SFTConfig, SFTTrainer
from revision.planner.tokenizer import PlanTokenizer


@dataclass
class PlannerTrainConfig:
    """The whole recipe (the stages' own configs take the rest of their settings)."""

    out: str | Path
    vocab_size: int = 1024
    sft_epochs: int = 8
    sft_lr: float = 1e-3
    answer_weight: float = 4.0
    # regularisation: SFT overfits the mined plans (train tool match twice the held-out one);
    # dropout and hiding results per step narrowed that gap (bench/RESULTS.md, issue 12)
    dropout: float = 0.2
    drop_results: float = 0.3
    grpo_steps: int = 60
    grpo_lr: float = 5e-5
    num_generations: int = 8
    beta: float = 0.04
    reward_funcs: tuple[str, ...] = ("format", "answer")
    easy_share: float = 0.5  # easy samples per hard one in the RL set
    threads: int = 2
    seed: int = 0
    skip_grpo: bool = False

    def __post_init__(self) -> None:
        if self.sft_epochs < 1:
            raise InputError(
                "sft_epochs must be at least 1: GRPO from a random model learns nothing"
            )
        if self.easy_share < 0:
            raise InputError(f"easy_share={self.easy_share}: use 0 or more")


def rl_samples(
    model: PlannerModel, samples: list[PlannerSample], easy_share: float, seed: int
) -> tuple[list[PlannerSample], list[PlannerSample]]:
    """(hard, RL set): the samples the model gets wrong, plus `easy_share` as many it gets
    right (drawn at random), so GRPO sharpens the former without forgetting the latter."""
    hard = hard_samples(model, samples)
    hard_ids = {id(s) for s in hard}
    easy = [s for s in samples if id(s) not in hard_ids]
    random.Random(seed).shuffle(easy)
    return hard, hard + easy[: int(easy_share * len(hard))]


@dataclass
class TrainReport:
    out: str
    final: str
    samples: int
    hard: int = 0
    rl_samples: int = 0
    sft: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    parameters: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_planner(
    samples: list[PlannerSample],
    config: PlannerTrainConfig,
    toollist_digest: str,
    *,
    resume: bool = False,
) -> TrainReport:
    """SFT then GRPO on `samples`; checkpoints under `config.out` (resumable)."""
    if not samples:
        raise InputError("no training samples: build them with `revision planner data`")
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = out / "tokenizer.json"
    if resume and tok_path.exists():
        tokenizer = PlanTokenizer.load(tok_path)
    else:
        max_tool = max(64, max(t for s in samples for t in (*s.answer, *s.live)))
        tokenizer = PlanTokenizer.train(
            [s.thinking for s in samples], vocab_size=config.vocab_size, max_tool=max_tool
        )
        tokenizer.save(tok_path)
    model_config = PlannerConfig.for_tokenizer(tokenizer)
    model = PlannerModel(model_config)
    sft_dir = out / "sft"
    sft = SFTTrainer(
        model,
        tokenizer,
        samples,
        SFTConfig(
            output_dir=sft_dir,
            num_train_epochs=config.sft_epochs,
            learning_rate=config.sft_lr,
            answer_weight=config.answer_weight,
            dropout=config.dropout,
            drop_results=config.drop_results,
            seed=config.seed,
            num_threads=config.threads,
        ),
        toollist_digest,
    ).train(resume=resume and latest_checkpoint(sft_dir) is not None)
    report = TrainReport(
        out=str(out),
        final=str(sft.checkpoint),
        samples=len(samples),
        sft=sft.metrics,
        parameters=model.num_parameters(),
    )
    if not config.skip_grpo:
        hard, rl = rl_samples(model, samples, config.easy_share, config.seed)
        report.hard, report.rl_samples = len(hard), len(rl)
        if rl:
            grpo_dir = out / "grpo"
            grpo = GRPOTrainer(
                model,
                tokenizer,
                rl,
                GRPOConfig(
                    output_dir=grpo_dir,
                    max_steps=config.grpo_steps,
                    learning_rate=config.grpo_lr,
                    num_generations=config.num_generations,
                    beta=config.beta,
                    reward_funcs=config.reward_funcs,
                    only_hard=False,
                    seed=config.seed,
                    num_threads=config.threads,
                ),
                toollist_digest,
            ).train(resume=resume and latest_checkpoint(grpo_dir) is not None)
            report.grpo = grpo.metrics
            report.final = str(grpo.checkpoint)
    report.seconds = round(time.perf_counter() - started, 1)
    (out / "final.json").write_text(json.dumps(report.as_dict(), indent=2, default=str))
    return report
