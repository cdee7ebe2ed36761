"""The embedded planner: a small decoder over soft tokens projected from the request features.

The paper's planner is a 3 B VLM reading images and text; here the images and titles arrive
already embedded (`PlannerFeatures`), so a ~2.3 M-parameter decoder trained from scratch reads
them as a prefix of soft tokens (the query, one per result, the user context) and writes
`<bos> <think> … </think> (i) (j) <eos>`. Training runs here in torch; inference runs in numpy
(`revision.planner.infer`), which mirrors `forward` weight for weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from revision.planner._base import PlannerFeatures
from revision.planner.config import PlannerConfig
from revision.planner.infer import prefix_arrays
from revision.planner.tokenizer import EOS, FIRST_TOOL, PAD

__all__ = ["PlannerConfig", "PlannerModel", "prefix_tensors"]


def prefix_tensors(
    batch: Sequence[PlannerFeatures], config: PlannerConfig
) -> dict[str, torch.Tensor]:
    """`prefix_arrays` as tensors (one layout for numpy and torch)."""
    return {k: torch.from_numpy(v) for k, v in prefix_arrays(batch, config).items()}


class _Block(nn.Module):
    """Pre-norm attention and SwiGLU feed-forward."""

    def __init__(self, c: PlannerConfig):
        super().__init__()
        self.heads = c.n_heads
        self.attn_norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.out = nn.Linear(c.d_model, c.d_model, bias=False)
        self.ffn_norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.gate_up = nn.Linear(c.d_model, 2 * c.ffn_hidden, bias=False)
        self.down = nn.Linear(c.ffn_hidden, c.d_model, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + F.dropout(self.out(attn.transpose(1, 2).reshape(b, n, d)), dropout, self.training)
        gate, up = self.gate_up(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + F.dropout(self.down(F.silu(gate) * up), dropout, self.training)


class PlannerModel(nn.Module):
    """Decoder with learned positions and tied input/output embeddings.

    The image projection is shared by the query and the results (they live in one embedding
    space); a learned type vector tells the three kinds of prefix token apart. Masked results
    are excluded from attention, so padding the result list changes nothing.
    """

    def __init__(self, config: PlannerConfig):
        super().__init__()
        c = self.config = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Parameter(torch.zeros(c.prefix_len + c.max_text, c.d_model))
        self.type_emb = nn.Parameter(torch.zeros(3, c.d_model))  # query, result, context
        self.image_proj = nn.Linear(c.image_dim, c.d_model, bias=False)
        self.title_proj = nn.Linear(c.title_dim, c.d_model, bias=False)
        self.scalar_proj = nn.Linear(c.n_scalars, c.d_model, bias=False)
        self.context_proj = nn.Linear(c.context_dim, c.d_model, bias=False)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.dropout = 0.0  # training only (set by the SFT trainer); inference never drops
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # residual outputs scaled down so the stream's variance does not grow with depth
                std = (
                    0.02 / (2 * c.n_layers) ** 0.5
                    if name.endswith(("out.weight", "down.weight"))
                    else 0.02
                )
                nn.init.normal_(p, std=std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed_prefix(self, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        query = self.image_proj(p["query"]) + self.type_emb[0]
        results = (
            self.image_proj(p["result_images"])
            + self.title_proj(p["result_titles"])
            + self.scalar_proj(p["result_scalars"])
            + self.type_emb[1]
        )
        context = self.context_proj(p["context"]) + self.type_emb[2]
        return torch.cat([query[:, None], results, context[:, None]], dim=1)

    def forward(self, prefix: Mapping[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, n, V) at the text positions of `tokens` (B, n), right-padded with `<pad>`."""
        soft = F.dropout(self.embed_prefix(prefix), self.dropout, self.training)
        x = torch.cat([soft, self.tok_emb(tokens)], dim=1)
        length = x.shape[1]
        x = x + self.pos_emb[:length]
        # keys that may be attended: query, present results, context, every text token
        present = prefix["result_mask"].bool()
        always = present.new_ones(len(present), 1)
        valid = torch.cat([always, present, always, tokens.new_ones(tokens.shape).bool()], 1)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        mask = causal & valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask, self.dropout)
        h = self.norm(x[:, self.config.prefix_len :])
        return h @ self.tok_emb.weight.T

    def loss(
        self, prefix: Mapping[str, torch.Tensor], tokens: torch.Tensor, answer_weight: float = 1.0
    ) -> torch.Tensor:
        """Next-token cross entropy on the text only (the prefix has no targets). The answer
        (tool tokens and the end) weighs `answer_weight` times a thinking token: a plan is a
        few tokens after a few dozen of thinking, and it is what the service runs."""
        logits = self(prefix, tokens)[:, :-1]
        targets = tokens[:, 1:]
        per_token = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).reshape(targets.shape)
        tool = (targets >= FIRST_TOOL) & (targets < FIRST_TOOL + self.config.max_tool)
        weight = torch.where(tool | (targets == EOS), answer_weight, 1.0) * (targets != PAD)
        return (per_token * weight).sum() / weight.sum().clamp_min(1.0)

    def numpy_weights(self) -> dict[str, np.ndarray]:
        """A float32 copy of the weights, for the numpy decoder and checkpoints."""
        return {
            k: v.detach().cpu().numpy().astype(np.float32, copy=True)
            for k, v in self.state_dict().items()
        }

    def load_numpy_weights(self, weights: Mapping[str, np.ndarray]) -> PlannerModel:
        self.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
        return self
