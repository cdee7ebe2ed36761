"""The embedded planner's decoder in numpy, with a KV cache, and the constrained decoding rule.

Trade-off: a second implementation of the forward pass (the torch one trains) in exchange for
a service that imports neither torch nor its threads: at ~2.3 M parameters a float32 numpy
decoder on one core writes a 60-token plan in tens of milliseconds. The tests hold the two
implementations to the same logits.

`PlanConstraint` is the one rule for what may come next, used by greedy decoding here and by
the GRPO sampler: `<think>`-text for at most `max_thinking` tokens, then `</think>` is forced;
after it only live, not yet named tool tokens or `<eos>`. So a decoded plan always parses.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from revision.errors import InputError
from revision.planner._base import PlannerFeatures
from revision.planner.config import PlannerConfig
from revision.planner.tokenizer import BOS, EOS, FIRST_TOOL, PAD, THINK, THINK_END, text_offset

PREFIX_KEYS = ("query", "result_images", "result_titles", "result_scalars", "context")


def prefix_arrays(batch: Sequence[PlannerFeatures], config: PlannerConfig) -> dict[str, np.ndarray]:
    """Stack requests into float32 arrays for the prefix; results are padded (masked) or cut
    to `config.k`, masked results are zeroed and non-finite values become 0."""
    n, k = len(batch), config.k
    dims = {
        "query": (config.image_dim,),
        "result_images": (k, config.image_dim),
        "result_titles": (k, config.title_dim),
        "result_scalars": (k, config.n_scalars),
        "context": (config.context_dim,),
    }
    out = {name: np.zeros((n, *shape), np.float32) for name, shape in dims.items()}
    out["result_mask"] = np.zeros((n, k), bool)
    for b, f in enumerate(batch):
        rows = min(len(f.result_mask), k)
        mask = np.asarray(f.result_mask, bool)[:rows]
        out["result_mask"][b, :rows] = mask
        for name, shape in dims.items():
            value = np.asarray(getattr(f, name), np.float32)
            if value.shape[-1:] != shape[-1:] or value.ndim != len(shape):
                raise InputError(
                    f"features.{name} has shape {value.shape}; the planner was trained with "
                    f"{shape[-1]} values per {'result' if len(shape) == 2 else 'request'}"
                )
            value = np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
            if len(shape) == 2:
                out[name][b, :rows] = np.where(mask[:, None], value[:rows], 0.0)
            else:
                out[name][b] = value
    return out


def key_valid(result_mask: np.ndarray) -> np.ndarray:
    """(B, prefix_len) True for prefix positions that may be attended: the query, the present
    results and the context."""
    ones = np.ones((len(result_mask), 1), bool)
    return np.concatenate([ones, result_mask, ones], axis=1)


class PlanConstraint:
    """Which tokens may follow `generated` (the ids after `<think>`), as a boolean mask.

    >>> c = PlanConstraint(vocab_size=80, max_tool=8, live=[2, 5], max_thinking=3, max_answer=2)
    >>> text = c.offset  # the first BPE id
    >>> bool(c.allowed([text])[text]), np.flatnonzero(c.allowed([text] * 3)).tolist() == [THINK_END]
    (True, True)
    >>> after = c.allowed([text, THINK_END, FIRST_TOOL + 1])  # (2) named: (5) or <eos> next
    >>> np.flatnonzero(after).tolist() == [EOS, FIRST_TOOL + 4]
    True
    """

    def __init__(
        self,
        vocab_size: int,
        max_tool: int,
        live: Iterable[int],
        max_thinking: int,
        max_answer: int,
    ):
        self.offset = text_offset(max_tool)
        self.max_thinking, self.max_answer = max_thinking, max_answer

        def only(*ids: int) -> np.ndarray:
            mask = np.zeros(vocab_size, bool)
            mask[list(ids)] = True
            return mask

        self._text = only(THINK_END, *range(self.offset, vocab_size))
        self._close, self._eos, self._pad = only(THINK_END), only(EOS), only(PAD)
        live_ids = [FIRST_TOOL + int(i) - 1 for i in set(live) if 1 <= int(i) <= max_tool]
        self._answer = only(EOS, *live_ids)
        for mask in (self._text, self._close, self._eos, self._pad, self._answer):
            mask.flags.writeable = False

    @classmethod
    def for_config(cls, config: PlannerConfig, live: Iterable[int]) -> PlanConstraint:
        return cls(config.vocab_size, config.max_tool, live, config.max_thinking, config.max_answer)

    def allowed(self, generated: Sequence[int]) -> np.ndarray:
        """(vocab_size,) read-only mask; after `<eos>` only `<pad>`."""
        if generated and generated[-1] in (EOS, PAD):
            return self._pad
        if THINK_END not in generated:
            return self._close if len(generated) >= self.max_thinking else self._text
        answer = generated[list(generated).index(THINK_END) + 1 :]
        if len(answer) >= self.max_answer:
            return self._eos
        mask = self._answer.copy()
        mask[list(answer)] = False
        return mask


def tools_of(generated: Sequence[int]) -> list[int]:
    """Tool indices named after `</think>` in a generated id sequence."""
    if THINK_END not in generated:
        return []
    tail = generated[list(generated).index(THINK_END) + 1 :]
    return [i - FIRST_TOOL + 1 for i in tail if i not in (EOS, PAD)]


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # sum / n rather than np.mean: the same value, a third of the call overhead per token
    return x / np.sqrt((x * x).sum(-1, keepdims=True) / x.shape[-1] + eps) * w


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@dataclass
class _Layer:
    attn_norm: np.ndarray
    qkv: np.ndarray  # (d, 3d): weights stored transposed, so x @ w
    out: np.ndarray
    ffn_norm: np.ndarray
    gate_up: np.ndarray
    down: np.ndarray


@dataclass
class KVCache:
    """One decoding call's keys and values; one per request, so `NumpyDecoder` is reentrant."""

    keys: list[np.ndarray]  # per layer (B, H, max_len, head)
    values: list[np.ndarray]
    bias: np.ndarray  # (B, max_len): 0 where a position may be attended, -inf elsewhere
    length: int = 0


class NumpyDecoder:
    """Forward pass of `PlannerModel` from its state dict (numpy arrays, torch names)."""

    def __init__(self, weights: Mapping[str, np.ndarray], config: PlannerConfig):
        self.config = c = config
        self.max_len = c.prefix_len + c.max_text
        self.heads, self.head, self.ffn = c.n_heads, c.d_model // c.n_heads, c.ffn_hidden
        expected = {
            "tok_emb.weight": (c.vocab_size, c.d_model),
            "pos_emb": (self.max_len, c.d_model),
            "type_emb": (3, c.d_model),
            "image_proj.weight": (c.d_model, c.image_dim),
            "title_proj.weight": (c.d_model, c.title_dim),
            "scalar_proj.weight": (c.d_model, c.n_scalars),
            "context_proj.weight": (c.d_model, c.context_dim),
            "norm.weight": (c.d_model,),
        }
        for i in range(c.n_layers):
            expected |= {
                f"blocks.{i}.attn_norm.weight": (c.d_model,),
                f"blocks.{i}.qkv.weight": (3 * c.d_model, c.d_model),
                f"blocks.{i}.out.weight": (c.d_model, c.d_model),
                f"blocks.{i}.ffn_norm.weight": (c.d_model,),
                f"blocks.{i}.gate_up.weight": (2 * c.ffn_hidden, c.d_model),
                f"blocks.{i}.down.weight": (c.d_model, c.ffn_hidden),
            }
        problems = [
            f"{name}: missing"
            if name not in weights
            else f"{name}: shape {tuple(np.shape(weights[name]))}, expected {shape}"
            for name, shape in expected.items()
            if name not in weights or tuple(np.shape(weights[name])) != shape
        ]
        problems += [f"{n}: unexpected" for n in sorted(set(weights) - set(expected))]
        if problems:
            raise InputError("planner weights do not fit the config: " + "; ".join(problems[:5]))
        w = {name: np.asarray(weights[name], np.float32) for name in expected}
        if not all(np.isfinite(v).all() for v in w.values()):
            raise InputError("planner weights contain NaN or infinity")

        def t(name: str) -> np.ndarray:
            return np.ascontiguousarray(w[name].T)

        self.tok_emb, self.pos_emb, self.type_emb = w["tok_emb.weight"], w["pos_emb"], w["type_emb"]
        self.image, self.title = t("image_proj.weight"), t("title_proj.weight")
        self.scalar, self.context = t("scalar_proj.weight"), t("context_proj.weight")
        self.norm, self.head_w = w["norm.weight"], t("tok_emb.weight")  # tied embeddings
        self.layers = [
            _Layer(
                w[f"blocks.{i}.attn_norm.weight"],
                t(f"blocks.{i}.qkv.weight"),
                t(f"blocks.{i}.out.weight"),
                w[f"blocks.{i}.ffn_norm.weight"],
                t(f"blocks.{i}.gate_up.weight"),
                t(f"blocks.{i}.down.weight"),
            )
            for i in range(c.n_layers)
        ]

    def _prefix(self, p: Mapping[str, np.ndarray]) -> np.ndarray:
        query = p["query"] @ self.image + self.type_emb[0]
        results = (
            p["result_images"] @ self.image
            + p["result_titles"] @ self.title
            + p["result_scalars"] @ self.scalar
            + self.type_emb[1]
        )
        context = p["context"] @ self.context + self.type_emb[2]
        return np.concatenate([query[:, None], results, context[:, None]], axis=1)

    def _run(self, x: np.ndarray, cache: KVCache) -> np.ndarray:
        """Run new positions `x` (B, n, d) through the blocks, extending `cache`."""
        b, n, d = x.shape
        start, end = cache.length, cache.length + n
        x = x + self.pos_emb[start:end]
        mask = cache.bias[:, None, None, :end]
        if n > 1:  # causal inside the new positions
            causal = np.triu(np.full((n, end), -np.inf, np.float32), k=start + 1)
            mask = mask + causal
        eps = self.config.norm_eps
        for layer, keys, values in zip(self.layers, cache.keys, cache.values, strict=True):
            qkv = (_rms(x, layer.attn_norm, eps) @ layer.qkv).reshape(b, n, 3, self.heads, -1)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (B, H, n, head)
            keys[:, :, start:end], values[:, :, start:end] = k, v
            scores = q @ keys[:, :, :end].swapaxes(-1, -2) / np.sqrt(np.float32(self.head))
            attn = _softmax(scores + mask) @ values[:, :, :end]
            x = x + attn.transpose(0, 2, 1, 3).reshape(b, n, d) @ layer.out
            gate_up = _rms(x, layer.ffn_norm, eps) @ layer.gate_up
            gate, up = gate_up[..., : self.ffn], gate_up[..., self.ffn :]
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ layer.down
        cache.length = end
        return _rms(x[:, -1], self.norm, eps) @ self.head_w

    def prefill(
        self, prefix: Mapping[str, np.ndarray], tokens: np.ndarray
    ) -> tuple[np.ndarray, KVCache]:
        """Logits (B, V) after the prefix and the first text `tokens` (B, n), and the cache."""
        b = len(tokens)
        shape = (b, self.heads, self.max_len, self.head)
        bias = np.zeros((b, self.max_len), np.float32)
        bias[:, : self.config.prefix_len][~key_valid(prefix["result_mask"])] = -np.inf
        cache = KVCache(
            [np.zeros(shape, np.float32) for _ in self.layers],
            [np.zeros(shape, np.float32) for _ in self.layers],
            bias,
        )
        x = np.concatenate([self._prefix(prefix), self.tok_emb[tokens]], axis=1)
        return self._run(x.astype(np.float32, copy=False), cache), cache

    def step(self, cache: KVCache, tokens: np.ndarray) -> np.ndarray:
        """Logits (B, V) after feeding one more token per row."""
        return self._run(self.tok_emb[tokens][:, None], cache)

    def generate(
        self,
        prefix: Mapping[str, np.ndarray],
        constraints: Sequence[PlanConstraint],
        temperature: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> list[list[int]]:
        """Decode one plan per row: greedy, or sampled at `temperature` (Gumbel-max, the same
        as sampling the constrained softmax). Returns the ids after `<think>`, `<eos>` last."""
        if temperature > 0 and rng is None:
            rng = np.random.default_rng()
        b = len(constraints)
        logits, cache = self.prefill(prefix, np.tile([BOS, THINK], (b, 1)))
        out: list[list[int]] = [[] for _ in range(b)]
        for _ in range(self.config.max_text - 2):
            allowed = np.stack([c.allowed(seq) for c, seq in zip(constraints, out, strict=True)])
            scores = np.where(allowed, logits, -np.inf)
            if temperature > 0:
                scores = scores / temperature + rng.gumbel(size=scores.shape)
            nxt = scores.argmax(-1)
            for seq, token in zip(out, nxt.tolist(), strict=True):
                if not seq or seq[-1] != EOS:
                    seq.append(token)
            if all(seq[-1] == EOS for seq in out):
                break
            logits = self.step(cache, nxt)
        return out


def plan_ids(decoder: NumpyDecoder, features: PlannerFeatures, live: Collection[int]) -> list[int]:
    """Greedy ids after `<think>` for one request."""
    prefix = prefix_arrays([features], decoder.config)
    return decoder.generate(prefix, [PlanConstraint.for_config(decoder.config, live)])[0]
