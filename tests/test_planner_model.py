"""The embedded planner: tokenizer, model, numpy decoder, constraint, SFT, GRPO, checkpoints.

Synthetic task: the answer is a deterministic function of the features (the argmax of the first
four context dims, `a`, gives the plan `(a+1) (a+5)` and the thinking names it), 24 live tools,
tiny models, one thread.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from revision.errors import ConfigError, InputError, MissingArtifactError
from revision.planner._base import Planner, PlannerFeatures, PlannerSample
from revision.planner._train import greedy_ids
from revision.planner.checkpoint import CheckpointMismatchError, load_checkpoint
from revision.planner.embedded import EmbeddedPlanner
from revision.planner.grpo import GRPOConfig, GRPOTrainer, hard_samples
from revision.planner.infer import NumpyDecoder, PlanConstraint, prefix_arrays, tools_of
from revision.planner.model import PlannerConfig, PlannerModel, prefix_tensors
from revision.planner.rewards import answer_reward, total_reward
from revision.planner.sft import SFTConfig, SFTTrainer
from revision.planner.tokenizer import BOS, EOS, THINK, THINK_END, PlanTokenizer
from revision.tools.grammar import parse_completion

WORDS = ("cheap", "colour", "style", "size")
N_TOOLS = 24
TOOLLIST = "toollist-v1"
TINY = dict(
    d_model=48, n_layers=2, n_heads=4, ffn_hidden=96, k=4, image_dim=16, title_dim=8,
    context_dim=8, max_thinking=8, max_answer=3,
)  # fmt: skip


def features(rng: np.random.Generator, cfg: PlannerConfig, context=None) -> PlannerFeatures:
    k = cfg.k
    return PlannerFeatures(
        query=rng.normal(size=cfg.image_dim),
        result_images=rng.normal(size=(k, cfg.image_dim)),
        result_titles=rng.normal(size=(k, cfg.title_dim)),
        result_scalars=rng.normal(size=(k, cfg.n_scalars)),
        result_mask=rng.random(k) < 0.75,
        context=rng.normal(size=cfg.context_dim) if context is None else context,
    )


def make_samples(n: int, seed: int = 0) -> list[PlannerSample]:
    rng = np.random.default_rng(seed)
    cfg = PlannerConfig(vocab_size=400, max_tool=N_TOOLS, **TINY)
    out = []
    for i in range(n):
        context = rng.normal(size=cfg.context_dim)
        context[rng.integers(4)] += 2.0
        a = int(np.argmax(context[:4]))
        out.append(
            PlannerSample(
                f"r{i}",
                features(rng, cfg, context),
                f"{WORDS[a]} matters",
                [a + 1, a + 5],
                list(range(1, N_TOOLS + 1)),
            )
        )
    return out


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny matrices: a second thread only adds synchronisation (and shares the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task():
    samples = make_samples(256)
    tokenizer = PlanTokenizer.train([s.thinking for s in samples], vocab_size=280, max_tool=N_TOOLS)
    return samples, tokenizer, PlannerConfig.for_tokenizer(tokenizer, **TINY)


def fresh_model(cfg: PlannerConfig, seed: int = 0) -> PlannerModel:
    torch.manual_seed(seed)
    return PlannerModel(cfg)


def sft_args(path, **kw) -> SFTConfig:
    return SFTConfig(path, batch_size=32, learning_rate=3e-3, num_threads=1, **kw)


@pytest.fixture(scope="module")
def sft_model(task, tmp_path_factory):
    """Partly trained: right on some samples, wrong on others (so GRPO has hard samples)."""
    samples, tokenizer, cfg = task
    model = fresh_model(cfg)
    out_dir = tmp_path_factory.mktemp("sft")
    out = SFTTrainer(model, tokenizer, samples, sft_args(out_dir, num_train_epochs=6), TOOLLIST)
    return model, out.train(), out_dir


def exact_share(model: PlannerModel, samples: list[PlannerSample]) -> float:
    ids = greedy_ids(model, samples)
    return float(np.mean([tools_of(i) == s.answer for i, s in zip(ids, samples, strict=True)]))


def scrambled(model: PlannerModel, std: float = 0.5, seed: int = 1) -> PlannerModel:
    """Large random weights: confident, arbitrary choices (near-ties stay improbable)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_round_trip_english_and_chinese(tmp_path):
    texts = ["the photo is dark; ask the user", "暗光照片，先问用户的偏好", "cheaper items exist"]
    tok = PlanTokenizer.train(texts * 5, vocab_size=300, max_tool=64)
    for text in texts:
        ids = tok.encode_completion(text, [3, 64])
        assert ids[:2] == [BOS, THINK] and ids[-1] == EOS
        assert parse_completion(tok.decode(ids)).thinking == text
        assert parse_completion(tok.decode(ids)).tools == (3, 64)
    long = "暗光照片，先问用户的偏好" * 20
    assert len(tok.encode_thinking(long)) == 48
    assert long.startswith(tok.decode(tok.encode_thinking(long)))  # cut, never garbled
    # "(2)" and think tags inside the thinking stay text, so the plan still parses
    assert parse_completion(tok.decode(tok.encode_completion("(2) <think> x", [1]))).tools == (1,)

    again = PlanTokenizer.load(tok.save(tmp_path / "tok.json"))
    assert again.vocab_digest == tok.vocab_digest
    assert again.encode_thinking(texts[1]) == tok.encode_thinking(texts[1])
    other = PlanTokenizer.train(["something else entirely"] * 5, vocab_size=300, max_tool=64)
    assert other.vocab_digest != tok.vocab_digest
    assert other.encode_completion("x", [7])[-2] == tok.encode_completion("y", [7])[-2]

    with pytest.raises(InputError, match=r"outside 1\.\.64"):
        tok.encode_completion("x", [65])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="not a planner tokenizer"):
        PlanTokenizer.load(tmp_path / "bad.json")


# --- model and numpy decoder -----------------------------------------------------------------


def test_default_config_size_and_checks():
    n = PlannerModel(PlannerConfig()).num_parameters()
    assert 2_000_000 <= n <= 3_000_000, n
    with pytest.raises(ConfigError, match="n_heads"):
        PlannerConfig(d_model=100, n_heads=6)
    with pytest.raises(ConfigError, match="max_answer"):
        PlannerConfig(max_tool=4, max_answer=8)
    with pytest.raises(ConfigError, match="for_tokenizer"):
        PlannerConfig(vocab_size=50, max_tool=64)


def torch_greedy(model: PlannerModel, f: PlannerFeatures, live) -> list[int]:
    """Greedy decoding by full forward passes (no cache), the same constraint."""
    constraint = PlanConstraint.for_config(model.config, live)
    prefix, out = prefix_tensors([f], model.config), []
    with torch.no_grad():
        while not out or out[-1] != EOS:
            logits = model(prefix, torch.tensor([[BOS, THINK, *out]]))[0, -1].numpy()
            out.append(int(np.where(constraint.allowed(out), logits, -np.inf).argmax()))
    return out


def test_numpy_decoder_matches_torch():
    cfg = PlannerConfig(vocab_size=1093, max_tool=64)  # the default shapes
    model = scrambled(PlannerModel(cfg), std=0.15)
    decoder = NumpyDecoder(model.numpy_weights(), cfg)
    rng = np.random.default_rng(0)
    batch = [features(rng, cfg) for _ in range(3)]
    lives = [range(1, 13), [2, 5, 9], range(1, 65)]
    got = decoder.generate(
        prefix_arrays(batch, cfg), [PlanConstraint.for_config(cfg, lv) for lv in lives]
    )
    for f, live, ids in zip(batch, lives, got, strict=True):
        assert ids == torch_greedy(model, f, live)
        # logits at every position: one full torch pass vs the numpy prefill and KV cache
        with torch.no_grad():
            expected = model(prefix_tensors([f], cfg), torch.tensor([[BOS, THINK, *ids]]))[0]
        logits, cache = decoder.prefill(prefix_arrays([f], cfg), np.array([[BOS, THINK]]))
        steps = [logits[0]] + [decoder.step(cache, np.array([t]))[0] for t in ids[:-1]]
        np.testing.assert_allclose(np.stack(steps), expected[1:-1].numpy(), atol=1e-4)
    assert len({len(ids) for ids in got}) > 1  # rows of different lengths in one batch


def test_masked_results_are_not_attended(task):
    _, _, cfg = task
    model = scrambled(PlannerModel(cfg))
    decoder = NumpyDecoder(model.numpy_weights(), cfg)
    f = features(np.random.default_rng(3), cfg)
    f.result_mask[:] = [True, False, True, False]
    g = copy.deepcopy(f)
    g.result_images[1] += 5.0
    g.result_titles[3] = np.nan  # garbage in a masked row changes nothing either
    tokens = torch.tensor([[BOS, THINK, 300, THINK_END]])
    with torch.no_grad():
        a, b = (model(prefix_tensors([x], cfg), tokens) for x in (f, g))
    torch.testing.assert_close(a, b)
    la, _ = decoder.prefill(prefix_arrays([f], cfg), tokens.numpy())
    lb, _ = decoder.prefill(prefix_arrays([g], cfg), tokens.numpy())
    np.testing.assert_array_equal(la, lb)
    g.result_images[0] += 5.0  # a live result does matter
    lc, _ = decoder.prefill(prefix_arrays([g], cfg), tokens.numpy())
    assert not np.allclose(la, lc)


def test_constrained_decoding_fuzz(task):
    _, tokenizer, cfg = task
    model = scrambled(PlannerModel(cfg), std=0.3)
    decoder = NumpyDecoder(model.numpy_weights(), cfg)
    rng = np.random.default_rng(7)
    seen_tools, n = set(), 0
    for _round in range(6):
        lives = [
            sorted(rng.choice(np.arange(1, N_TOOLS + 1), rng.integers(0, 6), replace=False))
            for _ in range(32)
        ]
        prefix = prefix_arrays([features(rng, cfg) for _ in lives], cfg)
        constraints = [PlanConstraint.for_config(cfg, lv) for lv in lives]
        for temperature in (0.0, 1.5):
            for ids, live in zip(
                decoder.generate(prefix, constraints, temperature, rng), lives, strict=True
            ):
                n += 1
                assert ids[-1] == EOS and ids.count(EOS) == 1 and ids.count(THINK_END) == 1
                assert ids.index(THINK_END) <= cfg.max_thinking
                plan = parse_completion(tokenizer.decode([BOS, THINK, *ids]), set(live))
                assert len(set(plan.tools)) == len(plan.tools) <= cfg.max_answer
                assert set(plan.tools) <= set(live)
                seen_tools |= set(plan.tools)
    assert n == 384 and len(seen_tools) > 5  # the fuzz did produce answers


# --- SFT -------------------------------------------------------------------------------------


def test_sft_loss_falls_and_weights_change(task, sft_model):
    samples, _, cfg = task
    model, out, out_dir = sft_model
    before = fresh_model(cfg).numpy_weights()
    after = model.numpy_weights()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    losses = [row["loss"] for row in out.history]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert exact_share(model, samples) > 0.2  # learnt some of the rule
    assert out.metrics["samples_per_s"] > 0
    assert (out_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "samples_per_s" in (out_dir / "report.html").read_text()
    assert out.checkpoint == load_checkpoint(out_dir).path


def test_dropout_regularises_training_only(task, tmp_path):
    """Dropout and result masking change the training steps, never what a trained model says."""
    samples, tokenizer, cfg = task
    model = scrambled(PlannerModel(cfg), std=0.15)
    f = prefix_tensors([samples[0].features], cfg)
    tokens = torch.tensor([[BOS, THINK, 300, THINK_END]])
    model.dropout = 0.5
    with torch.no_grad():
        model.eval()
        a, b = model(f, tokens), model(f, tokens)
        torch.testing.assert_close(a, b)  # eval mode ignores the dropout
        model.train()
        c = model(f, tokens)
    assert not torch.allclose(a, c)  # training mode drops
    model.dropout = 0.0
    np.testing.assert_allclose(  # the numpy decoder (inference) agrees with eval-mode torch
        NumpyDecoder(model.numpy_weights(), cfg).prefill(
            prefix_arrays([samples[0].features], cfg), tokens.numpy()
        )[0][0],
        a[0, -1].numpy(),
        atol=1e-4,
    )
    runs = {}
    for name, kw in {"plain": {}, "regularised": {"dropout": 0.3, "drop_results": 0.3}}.items():
        m = fresh_model(cfg)
        args = sft_args(tmp_path / name, num_train_epochs=1, **kw)
        runs[name] = SFTTrainer(m, tokenizer, samples, args, TOOLLIST).train().history
        assert m.dropout == 0.0  # the trainer leaves the model as inference expects it
    assert [r["loss"] for r in runs["plain"]] != [r["loss"] for r in runs["regularised"]]
    with pytest.raises(ConfigError, match="dropout"):
        sft_args(tmp_path / "bad", dropout=1.0)


def test_report_escapes_untrusted_text(task, tmp_path):
    samples, tokenizer, cfg = task
    evil = copy.deepcopy(samples[:4])
    evil[0].thinking = "<script>alert(1)</script> cheap"
    SFTTrainer(fresh_model(cfg), tokenizer, evil, sft_args(tmp_path, max_steps=1)).train()
    page = (tmp_path / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_resume_ends_where_an_uninterrupted_run_ends(task, sft_model, tmp_path, kind):
    samples, tokenizer, cfg = task
    if kind == "sft":

        def run(path, resume=False):
            args = sft_args(path, num_train_epochs=1, save_steps=2, save_total_limit=10)
            model = fresh_model(cfg, seed=1 if resume else 0)  # resume must not depend on init
            SFTTrainer(model, tokenizer, samples[:160], args, TOOLLIST).train(resume=resume)
            return model
    else:

        def run(path, resume=False):
            args = GRPOConfig(
                path, max_steps=5, save_steps=2, save_total_limit=10, num_threads=1,
                learning_rate=1e-3, num_generations=4,
            )  # fmt: skip
            model = copy.deepcopy(sft_model[0])
            GRPOTrainer(model, tokenizer, samples, args, TOOLLIST).train(resume=resume)
            return model

    whole = run(tmp_path / "a").numpy_weights()
    shutil.copytree(tmp_path / "a" / "checkpoint-0000002", tmp_path / "b" / "checkpoint-0000002")
    resumed = run(tmp_path / "b", resume=True).numpy_weights()
    for name in whole:
        np.testing.assert_allclose(resumed[name], whole[name], atol=1e-6)
    steps = [json.loads((tmp_path / p / "history.json").read_text()) for p in ("a", "b")]
    assert steps[0] == steps[1]  # the resumed run's curves are the whole run's


# --- GRPO ------------------------------------------------------------------------------------


def test_grpo_after_sft_raises_reward_on_hard_samples(task, sft_model, tmp_path):
    samples, tokenizer, _ = task
    model = copy.deepcopy(sft_model[0])
    hard = hard_samples(model, samples)
    assert 0 < len(hard) < len(samples)
    assert exact_share(model, hard) == 0.0

    def greedy_reward(m):
        texts = [tokenizer.decode([BOS, THINK, *ids]) for ids in greedy_ids(m, hard)]
        return np.mean(total_reward(texts, answer=[s.answer for s in hard]))

    before = greedy_reward(model)
    args = GRPOConfig(tmp_path, max_steps=30, prompts_per_step=8, learning_rate=1e-3, num_threads=1)
    out = GRPOTrainer(model, tokenizer, samples, args, TOOLLIST).train()
    assert out.metrics["samples_trained"] == len(hard)
    assert greedy_reward(model) > before + 0.3
    assert exact_share(model, hard) > 0.2
    rewards = [row["reward"] for row in out.history]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10])
    assert out.metrics["skipped_groups"] < out.metrics["groups"]
    assert (tmp_path / "curves.png").exists() and "skipped_groups" in (
        tmp_path / "report.html"
    ).read_text()


def test_grpo_from_a_random_model_gets_no_signal(task, tmp_path):
    samples, tokenizer, cfg = task
    model = fresh_model(cfg)
    before = model.numpy_weights()
    args = GRPOConfig(tmp_path, max_steps=4, prompts_per_step=8, num_threads=1)
    out = GRPOTrainer(model, tokenizer, samples, args, TOOLLIST).train()
    assert out.metrics["samples_trained"] == len(samples)  # every sample is hard
    assert out.metrics["skipped_groups"] == out.metrics["groups"] == 32
    assert all(row["reward"] == 1.0 for row in out.history)  # well-formed, never right
    after = model.numpy_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_grpo_config_ablations_and_checks(task, sft_model, tmp_path):
    assert [f.__name__ for f in GRPOConfig(tmp_path, reward_funcs=("answer",)).rewards()] == [
        "answer_reward"
    ]
    binary = GRPOConfig(tmp_path, reward_funcs=("format", "binary_answer"), num_generations=4)
    assert binary.to_dict()["reward_funcs"] == ["format", "binary_answer"]
    assert GRPOConfig(tmp_path, reward_funcs=(answer_reward,)).to_dict()["reward_funcs"] == [
        "answer_reward"
    ]
    with pytest.raises(ConfigError, match=r"valid: .*binary_answer"):
        GRPOConfig(tmp_path, reward_funcs=("accuracy",))
    with pytest.raises(ConfigError, match="at least 2"):
        GRPOConfig(tmp_path, num_generations=1)
    samples, tokenizer, _ = task
    model = copy.deepcopy(sft_model[0])
    out = GRPOTrainer(model, tokenizer, samples, binary, TOOLLIST).train()  # one epoch, G = 4
    assert out.metrics["groups"] == len(hard_samples(sft_model[0], samples))
    assert max(row["reward"] for row in out.history) <= 2.0


# --- checkpoints and the embedded planner ----------------------------------------------------


def test_checkpoint_from_another_vocabulary_or_tool_list_is_refused(task, sft_model, tmp_path):
    samples, tokenizer, _ = task
    _, out, out_dir = sft_model
    other = PlanTokenizer.train(["entirely different words"] * 9, vocab_size=280, max_tool=24)
    with pytest.raises(CheckpointMismatchError, match="vocabulary"):
        load_checkpoint(out_dir, expected_vocab_digest=other.vocab_digest)
    run = tmp_path / "run"
    shutil.copytree(out.checkpoint, run / out.checkpoint.name)
    trainer = SFTTrainer(
        fresh_model(PlannerConfig.for_tokenizer(other, **TINY)), other, samples, sft_args(run)
    )
    with pytest.raises(CheckpointMismatchError, match="vocabulary"):
        trainer.train(resume=True)
    trainer = SFTTrainer(fresh_model(task[2]), tokenizer, samples, sft_args(run), "toollist-v2")
    with pytest.raises(CheckpointMismatchError, match="tool list"):
        trainer.train(resume=True)
    with pytest.raises(CheckpointMismatchError, match="tool list"):
        EmbeddedPlanner.load(out_dir, expected_toollist_digest="toollist-v2")
    trainer = SFTTrainer(fresh_model(task[2]), tokenizer, samples, sft_args(run), TOOLLIST)
    with pytest.raises(ConfigError, match="resume=True"):
        trainer.train()  # a fresh run would mix its checkpoints with the old ones


def test_embedded_planner(task, sft_model, tmp_path):
    samples, _, _ = task
    model, out, out_dir = sft_model
    planner = EmbeddedPlanner.load(out_dir, expected_toollist_digest=TOOLLIST)
    assert isinstance(planner, Planner) and planner.toollist_digest == TOOLLIST
    ids = greedy_ids(model, samples[:20])
    for s, expected in zip(samples[:20], ids, strict=True):
        plan = planner.plan(s.features, s.live)
        assert list(plan.tools) == tools_of(expected)
    narrow = planner.plan(samples[0].features, [7])
    assert set(narrow.tools) <= {7}
    assert EmbeddedPlanner.load(out.checkpoint).version == planner.version

    # a request it cannot read gets the empty plan, never an exception
    broken = copy.deepcopy(samples[0].features)
    broken.context = np.zeros(99)
    assert planner.plan(broken, range(1, 25)).tools == ()

    # a retrained checkpoint has another version
    folder = tmp_path / "ckpt"
    shutil.copytree(out.checkpoint, folder)
    with np.load(folder / "weights.npz") as npz:
        weights = dict(npz)
    weights["norm.weight"] = weights["norm.weight"] * 1.01
    np.savez(folder / "weights.npz", **weights)
    assert EmbeddedPlanner.load(folder).version != planner.version

    weights["norm.weight"][0] = np.nan
    np.savez(folder / "weights.npz", **weights)
    with pytest.raises(InputError, match="NaN"):
        EmbeddedPlanner.load(folder)
    del weights["norm.weight"]
    np.savez(folder / "weights.npz", **weights)
    with pytest.raises(InputError, match=r"norm\.weight: missing"):
        EmbeddedPlanner.load(folder)
    (folder / "weights.npz").write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="unreadable"):
        EmbeddedPlanner.load(folder)
    with pytest.raises(MissingArtifactError, match="no planner checkpoint"):
        EmbeddedPlanner.load(tmp_path / "nothing-here")


def test_inference_path_does_not_import_torch():
    code = (
        "import sys, revision.planner.embedded, revision.planner.infer; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.mark.parametrize(
    "module",
    [
        "revision.planner.tokenizer",
        "revision.planner.config",
        "revision.planner.infer",
        "revision.planner._train",
    ],
)
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
