"""Embedded planner benchmark: latency per plan on one core, and training speed.

Latency: a default-size planner (`PlannerConfig()`, ~2.3 M parameters) is saved as a checkpoint,
loaded through `EmbeddedPlanner` (numpy, no torch on that path) and `plan()` is timed per
request, end to end: features to arrays, prefill, cached decoding under the constraint, text
decoding and parsing. Weights are random: the thinking then runs to its 48-token cap before the
answer, so each plan generates ~50-58 tokens, the top of the 40-70 budget. numpy's BLAS runs on
one thread (threadpoolctl, else environment variables set before numpy is imported).

Training (`--train-samples 0` skips it): SFT samples per second and GRPO seconds per group of 8
on synthetic samples with the production shapes (1280-d images, 384-d titles, thinking texts
of 15-40 tokens), torch on `--threads` threads.

    python bench/bench_planner_latency.py --plans 500
"""

from __future__ import annotations

import os

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pin BLAS through the environment before numpy loads
    threadpool_limits = None
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from revision.planner._base import PlannerFeatures, PlannerSample
from revision.planner.embedded import EmbeddedPlanner
from revision.planner.infer import plan_ids
from revision.planner.tokenizer import PlanTokenizer

PHRASES = (
    "the query photo is dark",
    "results differ a lot in price",
    "several colours of the same dress",
    "the user likely wants a cheaper one",
    "ask which colour is preferred",
    "titles mention cotton and linen",
    "暗光照片，先问用户的偏好",
    "价格差异很大，推荐更便宜的",
    "same design in other sizes",
    "the top results are near duplicates",
)


def synthetic_samples(n: int, seed: int = 0) -> list[PlannerSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 12
        images = rng.normal(size=(k + 1, 1280)).astype(np.float32)
        images /= np.linalg.norm(images, axis=1, keepdims=True)
        features = PlannerFeatures(
            query=images[0],
            result_images=images[1:],
            result_titles=rng.normal(size=(k, 384)).astype(np.float32),
            result_scalars=rng.normal(size=(k, 4)).astype(np.float32),
            result_mask=np.arange(k) < rng.integers(4, k + 1),
            context=rng.normal(size=32).astype(np.float32),
        )
        # stock phrases plus made-up product words, so the BPE fills its ~1k vocabulary
        words = ["".join(rng.choice(list("abcdefghilmnoprstu"), 6)) for _ in range(2)]
        words.append("".join(chr(c) for c in rng.integers(0x4E00, 0x4E80, 3)))
        phrases = rng.choice(PHRASES, size=rng.integers(1, 4), replace=False)
        thinking = "; ".join([*phrases, " ".join(words)])
        answer = [int(t) for t in rng.choice(np.arange(1, 13), rng.integers(1, 4), replace=False)]
        out.append(PlannerSample(f"r{i}", features, thinking, answer, list(range(1, 13))))
    return out


def one_blas_thread():
    return threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()


def latency(samples: list[PlannerSample], plans: int, folder: Path) -> dict:
    import torch

    from revision.planner.checkpoint import save_checkpoint
    from revision.planner.model import PlannerConfig, PlannerModel

    tokenizer = PlanTokenizer.train([s.thinking for s in samples], vocab_size=1024)
    torch.manual_seed(0)
    model = PlannerModel(PlannerConfig.for_tokenizer(tokenizer))
    save_checkpoint(
        folder,
        0,
        config=model.config,
        tokenizer=tokenizer,
        weights=model.numpy_weights(),
        toollist_digest="bench",
    )
    planner = EmbeddedPlanner.load(folder)
    times, tokens = [], []
    with one_blas_thread():
        for i in range(plans + 20):
            s = samples[i % len(samples)]
            began = time.perf_counter()
            planner.plan(s.features, s.live)
            if i >= 20:  # warm-up
                times.append((time.perf_counter() - began) * 1000)
                tokens.append(len(plan_ids(planner.decoder, s.features, s.live)))
    return {
        "parameters": model.num_parameters(),
        "vocab_size": tokenizer.vocab_size,
        "plans": plans,
        "tokens_min": min(tokens),
        "tokens_max": max(tokens),
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(np.mean(times)),
    }


def training(samples: list[PlannerSample], threads: int, folder: Path) -> dict:
    import torch

    from revision.planner.grpo import GRPOConfig, GRPOTrainer
    from revision.planner.model import PlannerConfig, PlannerModel
    from revision.planner.sft import SFTConfig, SFTTrainer

    tokenizer = PlanTokenizer.train([s.thinking for s in samples], vocab_size=1024)
    torch.manual_seed(0)
    model = PlannerModel(PlannerConfig.for_tokenizer(tokenizer))
    sft = SFTTrainer(
        model,
        tokenizer,
        samples,
        SFTConfig(folder / "sft", num_train_epochs=2, num_threads=threads),
    ).train()
    grpo = GRPOTrainer(
        model,
        tokenizer,
        samples,
        GRPOConfig(folder / "grpo", max_steps=6, num_threads=threads, only_hard=False),
    ).train()
    return {
        "threads": threads,
        "sft_samples": len(samples),
        "sft_samples_per_s": sft.metrics["samples_per_s"],
        "sft_loss_first": sft.history[0]["loss"],
        "sft_loss_last": sft.history[-1]["loss"],
        "grpo_groups": grpo.metrics["groups"],
        "grpo_s_per_group": grpo.metrics["s_per_group"],
        "grpo_skipped_groups": grpo.metrics["skipped_groups"],
    }


def markdown(result: dict) -> str:
    lat = result["latency"]
    lines = [
        f"Load average before: {result['load_before']}; after: {result['load_after']}.",
        "",
        "| parameters | vocab | plans | tokens per plan | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|---|---|",
        f"| {lat['parameters']:,} | {lat['vocab_size']} | {lat['plans']} | "
        f"{lat['tokens_min']}-{lat['tokens_max']} | {lat['p50_ms']:.1f} | {lat['p99_ms']:.1f} | "
        f"{lat['mean_ms']:.1f} |",
    ]
    train = result.get("training")
    if train:
        lines += [
            "",
            "| torch threads | SFT samples/s | SFT loss first → last | GRPO s per group of 8 "
            "| GRPO groups skipped (equal rewards, no update) |",
            "|---|---|---|---|---|",
            f"| {train['threads']} | {train['sft_samples_per_s']} | "
            f"{train['sft_loss_first']:.2f} → {train['sft_loss_last']:.2f} | "
            f"{train['grpo_s_per_group']} | {train['grpo_skipped_groups']} of "
            f"{train['grpo_groups']} |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plans", type=int, default=500)
    parser.add_argument("--train-samples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/out/planner_latency.json")
    args = parser.parse_args()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        result = {"latency": latency(synthetic_samples(200, seed=1), args.plans, Path(tmp) / "lat")}
        if args.train_samples:
            samples = synthetic_samples(args.train_samples)
            result["training"] = training(samples, args.threads, Path(tmp) / "train")
    result["load_before"] = load_before
    result["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("## Embedded planner\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
