"""The embedded planner's vocabulary: a small byte-level BPE for the thinking, plus fixed ids.

Trade-off: a BPE trained on our own thinking texts (~1k tokens) instead of a pretrained
tokenizer keeps the embedding table, and so the whole model, small enough to stay in the CPU
cache. Bytes keep it total: Chinese or any other text encodes without unknown tokens.

Id layout (fixed, so a tool keeps its id while the BPE is retrained and the tool list grows):
the special tokens first, then one token per tool index `(1)`…`(max_tool)`, then the BPE.
The BPE never produces a special or tool id, so "(2)" written inside the thinking stays text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from revision.errors import ConfigError, InputError, MissingArtifactError
from revision.tools.grammar import THINK_CLOSE, THINK_OPEN

SPECIALS = ("<pad>", "<bos>", "<eos>", THINK_OPEN, THINK_CLOSE)
PAD, BOS, EOS, THINK, THINK_END = range(len(SPECIALS))
FIRST_TOOL = len(SPECIALS)  # id of the tool token (1)
MAX_THINKING = 48  # thinking tokens kept in training and allowed at inference
_FORMAT = "revision-plan-tokenizer/1"


def tool_token(index: int) -> int:
    """The id of the tool token `(index)`.

    >>> tool_token(1) == FIRST_TOOL
    True
    """
    return FIRST_TOOL + int(index) - 1


def text_offset(max_tool: int) -> int:
    """The first BPE id: specials and tool tokens come before it."""
    return FIRST_TOOL + max_tool


def _clean(text: str) -> str:
    """Thinking as `format_completion` prints it: one line, no think tags."""
    return " ".join(str(text).replace(THINK_OPEN, " ").replace(THINK_CLOSE, " ").split())


class PlanTokenizer:
    """Encodes completions `<bos> <think> … </think> (i) (j) <eos>` and decodes them back.

    >>> tok = PlanTokenizer.train(["cheap items exist", "暗光照片，先问用户"], vocab_size=300)
    >>> tok.decode(tok.encode_completion("cheap items exist", [2, 6]))
    '<think>cheap items exist</think> (2) (6)'
    >>> tok.decode(tok.encode_completion("暗光照片", [8]))
    '<think>暗光照片</think> (8)'
    """

    def __init__(self, bpe: Tokenizer, max_tool: int = 64):
        self.bpe = bpe
        self.max_tool = int(max_tool)
        self.offset = text_offset(self.max_tool)

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 1024, max_tool: int = 64
    ) -> PlanTokenizer:
        """Train the BPE part on `texts`. `vocab_size` counts bytes and merges (at least the
        256 bytes); the specials and `max_tool` tool tokens come on top."""
        if vocab_size < 256:
            raise ConfigError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 256")
        if max_tool < 1:
            raise ConfigError(f"max_tool={max_tool}: reserve at least one tool token")
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator((_clean(t) for t in texts), trainer=trainer)
        return cls(bpe, max_tool)

    @property
    def vocab_size(self) -> int:
        return self.offset + self.bpe.get_vocab_size()

    @property
    def vocab_digest(self) -> str:
        """A hash of everything that fixes the ids: a checkpoint must match it."""
        model = json.loads(self.bpe.to_str())["model"]
        blob = json.dumps(
            {"specials": SPECIALS, "max_tool": self.max_tool, "bpe": model}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def encode_thinking(self, text: str, max_tokens: int = MAX_THINKING) -> list[int]:
        """The thinking's ids, cut to `max_tokens` (the model's thinking budget)."""
        ids = self.bpe.encode(_clean(text), add_special_tokens=False).ids[:max_tokens]
        return [i + self.offset for i in ids]

    def encode_completion(
        self, thinking: str, tools: Sequence[int], max_thinking: int = MAX_THINKING
    ) -> list[int]:
        """`<bos> <think> … </think> (i) … <eos>`, the sequence the model is trained on."""
        bad = [t for t in tools if not 1 <= int(t) <= self.max_tool]
        if bad:
            raise InputError(
                f"tool index {bad[0]} is outside 1..{self.max_tool}; train a tokenizer with a "
                "larger max_tool"
            )
        return [
            BOS,
            THINK,
            *self.encode_thinking(thinking, max_thinking),
            THINK_END,
            *(tool_token(t) for t in tools),
            EOS,
        ]

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`: `<pad>`, `<bos>`, `<eos>` are dropped, tool tokens print as ` (i)`,
        a byte sequence cut mid-character loses the broken character."""
        parts: list[str] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                parts.append(self.bpe.decode(run).replace("\ufffd", ""))
                run.clear()

        for i in ids:
            i = int(i)
            if i >= self.offset:
                run.append(i - self.offset)
                continue
            flush()
            if i >= FIRST_TOOL:
                parts.append(f" ({i - FIRST_TOOL + 1})")
            elif i in (THINK, THINK_END):
                parts.append(SPECIALS[i])
        flush()
        return "".join(parts)

    def to_json(self) -> str:
        return json.dumps(
            {"format": _FORMAT, "max_tool": self.max_tool, "bpe": json.loads(self.bpe.to_str())}
        )

    @classmethod
    def from_json(cls, text: str) -> PlanTokenizer:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise InputError(f"not a planner tokenizer (expected format {_FORMAT!r})")
        return cls(Tokenizer.from_str(json.dumps(data["bpe"])), int(data["max_tool"]))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PlanTokenizer:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise MissingArtifactError(f"{path}: cannot read the planner tokenizer ({e})") from e
        try:
            return cls.from_json(text)
        except InputError as e:
            raise InputError(f"{path}: {e}") from e
        except Exception as e:  # json and tokenizers both fail with plain exceptions
            raise InputError(f"{path}: not a valid planner tokenizer ({e})") from e
