"""GPU check of the planner's TRL path: SFT, then GRPO with generation in a colocated vLLM.

Run by scripts/gpu_check_trl.sh (which builds the environment). Without --model-dir it trains
the tiny random Qwen2.5-VL on synthetic requests, as the CPU test does; with --model-dir (e.g. a
local Qwen2.5-VL-3B-Instruct) it trains that instead. Prints timings and the reward metrics,
and exits non-zero if a stage fails or GRPO logs no rewards from our reward functions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from revision.planner import trl_backend as tb
from revision.planner._base import PlannerFeatures, PlannerSample
from revision.tools.grammar import format_completion

TOOLS = [
    (1, "Price range segmentation", "show cheaper or dearer alternatives to the query"),
    (2, "Colour variants", "the same design in other colours"),
    (3, "Ask a question", "the photo is ambiguous: ask the user what they want"),
]
COLOURS = [(200, 40, 40), (40, 180, 40), (40, 40, 200), (200, 200, 40)]
ANSWERS = [[1], [2], [3], [1, 2]]
THINKING = [
    "results cheaper than the photo",
    "same design other colours",
    "photo unclear",
    "cheaper and other colours",
]


def make_samples(root: Path, n: int, k: int = 2) -> list[PlannerSample]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        c = i % 4
        Image.new("RGB", (64, 64), COLOURS[c]).save(root / f"q{i}.png")
        results = []
        for j in range(k):
            Image.new("RGB", (64, 48), COLOURS[(c + j + 1) % 4]).save(root / f"r{i}_{j}.png")
            results.append({"image": f"r{i}_{j}.png", "title": f"dress {j}", "price": 10 + j})
        z = np.zeros((k, 4))
        features = PlannerFeatures(np.zeros(4), z, z, z, np.ones(k, bool), np.zeros(2))
        meta = {"image": f"q{i}.png", "results": results}
        sample = PlannerSample(f"req{i}", features, THINKING[c], ANSWERS[c], [1, 2, 3], meta=meta)
        out.append(sample)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="a Qwen2.5-VL directory (default: tiny)")
    ap.add_argument("--work-dir", type=Path, help="where to write (default: a temp dir)")
    ap.add_argument("--no-vllm", action="store_true", help="generate with transformers")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--sft-steps", type=int, default=10)
    ap.add_argument("--grpo-steps", type=int, default=4)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="revision-gpu-trl-"))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    samples = make_samples(work / "images", args.samples)
    tiny = args.model_dir is None
    if tiny:
        texts = [tb.system_prompt(TOOLS)] + [
            format_completion(th, a) for th, a in zip(THINKING, ANSWERS, strict=True)
        ]
        model_dir = tb.build_tiny_model(work / "tiny", texts)
    else:
        model_dir = args.model_dir
    dataset = tb.to_chat_dataset(samples, TOOLS, image_root=work / "images")
    timings["build"] = time.perf_counter() - t
    config = tb.TRLConfig(
        model_dir=model_dir,
        output_dir=work / "out",
        sft_learning_rate=1e-2 if tiny else 2e-4,
        grpo_learning_rate=1e-3 if tiny else 1e-5,
        sft_max_steps=args.sft_steps,
        grpo_max_steps=args.grpo_steps,
        max_thinking_tokens=24 if tiny else tb.MAX_THINKING_TOKENS,
        max_completion_length=40 if tiny else 320,
        use_vllm=not args.no_vllm,
        vllm_mode="colocate",
    )
    t = time.perf_counter()
    sft = tb.train_sft(config, dataset)
    timings["sft"] = time.perf_counter() - t
    t = time.perf_counter()
    grpo = tb.train_grpo(config, dataset, model_dir=sft.merged_dir)
    timings["grpo"] = time.perf_counter() - t
    t = time.perf_counter()
    tb.load_adapter(grpo.base_dir, grpo.adapter_dir)
    timings["reload"] = time.perf_counter() - t

    losses = [h["loss"] for h in sft.log_history if "loss" in h]
    steps = [h for h in grpo.log_history if "reward" in h]
    print(f"SFT loss: {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    for h in steps:
        print(
            f"GRPO step {h.get('step')}: format {h.get('rewards/format_reward/mean')}, "
            f"answer {h.get('rewards/answer_reward/mean')}, reward_std {h.get('reward_std')}, "
            f"step_time {h.get('step_time')}"
        )
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (training side)")
    ok = bool(steps) and all("rewards/format_reward/mean" in h for h in steps)
    print("OK" if ok else "FAILED: GRPO logged no rewards from format_reward/answer_reward")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
