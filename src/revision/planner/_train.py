"""What the SFT and GRPO trainers share: settings, the step loop, data order, learning rate,
checkpoints with optimizer state, resume and the report.

Resuming must end where an uninterrupted run would, so nothing depends on hidden state: the
data order of an epoch is a function of (seed, epoch), the learning rate a function of the
step, sampling seeds a function of (seed, step), and the optimizer state is saved with the
weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from revision.errors import ConfigError
from revision.planner._base import PlannerSample
from revision.planner.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from revision.planner.infer import NumpyDecoder, PlanConstraint, prefix_arrays
from revision.planner.model import PlannerModel
from revision.planner.report import write_report
from revision.planner.tokenizer import BOS, PAD, THINK, PlanTokenizer
from revision.progress import progress
from revision.tools.grammar import format_completion

STATE = "trainer_state.pt"


@dataclass
class TrainConfig:
    """Settings both trainers take (trl-like names)."""

    output_dir: str | Path
    num_train_epochs: int = 3
    max_steps: int = -1  # > 0 overrides num_train_epochs
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 0
    num_threads: int = 2
    save_steps: int = 0  # 0: save at the end only
    save_total_limit: int = 2

    def __post_init__(self) -> None:
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set num_train_epochs > 0 or max_steps > 0")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate}: must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio}: use a fraction in [0, 1)")
        if self.num_threads < 1 or self.save_total_limit < 1 or self.save_steps < 0:
            raise ConfigError(
                "num_threads and save_total_limit must be at least 1, save_steps 0 or more"
            )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["output_dir"] = str(self.output_dir)
        return out


@dataclass
class TrainOutput:
    step: int
    checkpoint: Path
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def cosine_lr(step: int, total: int, warmup_ratio: float) -> float:
    """Learning-rate factor: linear warmup, then cosine decay to 0.

    >>> [round(cosine_lr(s, 10, 0.2), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    warmup = int(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Sample indices of `step`: epochs are shuffled with (seed, epoch), batches follow."""
    per_epoch = math.ceil(n / batch_size)
    epoch, j = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[j * batch_size : (j + 1) * batch_size]


def pad_tokens(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def greedy_ids(
    model: PlannerModel, samples: list[PlannerSample], chunk: int = 64
) -> list[list[int]]:
    """The model's greedy plans (ids after `<think>`), through the numpy decoder."""
    decoder = NumpyDecoder(model.numpy_weights(), model.config)
    out: list[list[int]] = []
    with one_blas_thread():
        for start in range(0, len(samples), chunk):
            part = samples[start : start + chunk]
            prefix = prefix_arrays([s.features for s in part], model.config)
            out += decoder.generate(
                prefix, [PlanConstraint.for_config(model.config, s.live) for s in part]
            )
    return out


def one_blas_thread():
    """numpy's BLAS on one thread: its threads and torch's busy-waiting ones slow each other
    down several-fold on small matrices."""
    return threadpool_limits(1, user_api="blas")


class Trainer:
    """The step loop. Subclasses set `kind`, `samples` and the plotted `curves`, and give
    `total_steps`, `_step(step) -> dict` (one optimizer step's metrics) and `_summary`."""

    kind = ""
    curves: tuple[str, ...] = ()
    samples: list[PlannerSample]

    def __init__(
        self,
        model: PlannerModel,
        tokenizer: PlanTokenizer,
        args: TrainConfig,
        toollist_digest: str,
    ):
        if (tokenizer.vocab_size, tokenizer.max_tool) != (
            model.config.vocab_size,
            model.config.max_tool,
        ):
            raise ConfigError(
                f"the tokenizer has {tokenizer.vocab_size} tokens and {tokenizer.max_tool} tool "
                f"slots, the model {model.config.vocab_size} and {model.config.max_tool}; build "
                "the model with PlannerConfig.for_tokenizer(tokenizer)"
            )
        self.model, self.tokenizer, self.args = model, tokenizer, args
        self.toollist_digest = toollist_digest
        self.output_dir = Path(args.output_dir)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay
        )
        self.history: list[dict] = []

    @property
    def total_steps(self) -> int:
        raise NotImplementedError

    def _step(self, step: int) -> dict:
        raise NotImplementedError

    def _summary(self, steps: int, seconds: float) -> dict:
        return {}

    def _examples(self) -> list[dict]:
        """Greedy plans for the first few training samples next to their references."""
        shown = self.samples[:8]
        return [
            {
                "request": s.request_id,
                "reference": format_completion(s.thinking, s.answer),
                "model": self.tokenizer.decode([BOS, THINK, *ids]),
            }
            for s, ids in zip(shown, greedy_ids(self.model, shown), strict=True)
        ]

    def _resume(self) -> int:
        ckpt = load_checkpoint(
            self.output_dir,
            expected_vocab_digest=self.tokenizer.vocab_digest,
            expected_toollist_digest=self.toollist_digest,
        )
        if ckpt.config != self.model.config:
            raise ConfigError(
                f"checkpoint {ckpt.path} has another architecture ({ckpt.config}); build the "
                "model with the checkpoint's config or use a new output folder"
            )
        if ckpt.meta.get("kind") != self.kind:
            raise ConfigError(
                f"checkpoint {ckpt.path} was written by {ckpt.meta.get('kind')!r} training, not "
                f"{self.kind!r}; use a separate output folder per stage"
            )
        self.model.load_numpy_weights(ckpt.weights)
        state = torch.load(ckpt.path / STATE, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        return ckpt.step

    def save(self, step: int) -> Path:
        state = {"optimizer": self.optimizer.state_dict(), "history": self.history}
        return save_checkpoint(
            self.output_dir,
            step,
            config=self.model.config,
            tokenizer=self.tokenizer,
            weights=self.model.numpy_weights(),
            toollist_digest=self.toollist_digest,
            meta={"kind": self.kind, "args": self.args.to_dict()},
            extra={STATE: lambda p: torch.save(state, p)},
            keep=self.args.save_total_limit,
        )

    def train(self, resume: bool = False) -> TrainOutput:
        """Run to `total_steps`, continuing from the newest checkpoint when `resume`."""
        if not resume and latest_checkpoint(self.output_dir):
            raise ConfigError(
                f"{self.output_dir} already holds checkpoints; pass resume=True to continue "
                "that run, or choose an empty output folder"
            )
        start = self._resume() if resume else 0
        total, args = self.total_steps, self.args
        threads = torch.get_num_threads()
        torch.set_num_threads(args.num_threads)
        self.model.train()
        began = time.perf_counter()
        checkpoint = None
        try:
            for step in progress(range(start, total), total=total - start, description=self.kind):
                lr = args.learning_rate * cosine_lr(step, total, args.warmup_ratio)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.history.append({"step": step + 1, "lr": lr, **self._step(step)})
                if (args.save_steps and (step + 1) % args.save_steps == 0) or step + 1 == total:
                    checkpoint = self.save(step + 1)
        finally:
            torch.set_num_threads(threads)
        self.model.eval()
        seconds = time.perf_counter() - began
        checkpoint = checkpoint or latest_checkpoint(self.output_dir) or self.save(start)
        metrics = {"steps": total, "steps_this_run": total - start, "seconds": round(seconds, 2)}
        metrics |= self._summary(total - start, seconds)
        write_report(
            self.output_dir,
            f"Planner {self.kind}",
            self.history,
            self.curves,
            metrics
            | {
                "toollist_digest": self.toollist_digest,
                "vocab_digest": self.tokenizer.vocab_digest,
            },
            self._examples(),
        )
        return TrainOutput(total, checkpoint, list(self.history), metrics)
