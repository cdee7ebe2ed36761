"""The embedded planner's architecture, torch-free so the numpy decoder can read it too."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from revision.errors import ConfigError
from revision.planner._base import RESULT_SCALARS, K
from revision.planner.tokenizer import FIRST_TOOL, MAX_THINKING, text_offset


@dataclass(frozen=True)
class PlannerConfig:
    """Shapes of the decoder and of its soft-token prefix.

    The defaults give ~2.3 M parameters, the size that stays in the CPU cache (a 5.8 M model
    was 6-8x slower per token on this machine). `vocab_size` must equal the tokenizer's.

    >>> PlannerConfig(d_model=100, n_heads=6)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    revision.errors.ConfigError: d_model=100 is not a multiple of n_heads=6; pick d_model = ...
    """

    vocab_size: int = 1024 + FIRST_TOOL + 64  # a 1k BPE, the specials, 64 tool tokens
    max_tool: int = 64
    d_model: int = 192
    n_layers: int = 3
    n_heads: int = 6
    ffn_hidden: int = 768
    k: int = K
    image_dim: int = 1280
    title_dim: int = 384
    n_scalars: int = len(RESULT_SCALARS)
    context_dim: int = 32
    max_thinking: int = MAX_THINKING
    max_answer: int = 8
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value <= 0 and f.name != "max_thinking":
                raise ConfigError(f"{f.name}={value}: must be positive")
        if self.max_thinking < 0:
            raise ConfigError(f"max_thinking={self.max_thinking}: must be 0 or more")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}; pick "
                "d_model = n_heads * head size (e.g. 192 = 6 * 32)"
            )
        if self.vocab_size <= text_offset(self.max_tool):
            raise ConfigError(
                f"vocab_size={self.vocab_size} leaves no BPE tokens after the specials and "
                f"{self.max_tool} tool tokens; use PlannerConfig.for_tokenizer(tokenizer)"
            )
        if self.max_answer > self.max_tool:
            raise ConfigError(
                f"max_answer={self.max_answer} exceeds max_tool={self.max_tool}: an answer "
                "cannot name more distinct tools than exist; lower max_answer"
            )

    @classmethod
    def for_tokenizer(cls, tokenizer, **overrides) -> PlannerConfig:
        """A config whose vocabulary matches `tokenizer` (a `PlanTokenizer`)."""
        return cls(vocab_size=tokenizer.vocab_size, max_tool=tokenizer.max_tool, **overrides)

    @property
    def prefix_len(self) -> int:
        """Soft tokens before the text: the query, K results, the user context."""
        return self.k + 2

    @property
    def max_text(self) -> int:
        """`<bos> <think>`, the thinking, `</think>`, the answer, `<eos>`."""
        return 2 + self.max_thinking + 1 + self.max_answer + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PlannerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown planner config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)
