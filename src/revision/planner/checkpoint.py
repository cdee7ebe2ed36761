"""Planner checkpoints: one folder per saved step, written atomically, readable without torch.

A checkpoint is `checkpoint-<step>/` holding `config.json` (architecture, step, digests,
trainer settings), `tokenizer.json`, `weights.npz` (float32, the torch parameter names) and,
from the trainers, `trainer_state.pt` (optimizer, history). It is written under a temporary
name and renamed into place, so a crash leaves the previous checkpoint as the latest one.
The weights are numpy so that the service loads them without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from revision.errors import ConfigError, InputError, MissingArtifactError
from revision.planner.config import PlannerConfig
from revision.planner.tokenizer import PlanTokenizer

CONFIG, TOKENIZER, WEIGHTS = "config.json", "tokenizer.json", "weights.npz"
_FORMAT = "revision-planner-checkpoint/1"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_UNREADABLE = (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile, ConfigError)


class CheckpointMismatchError(ConfigError):
    """A checkpoint made for another vocabulary or another tool list."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    config: PlannerConfig
    tokenizer: PlanTokenizer
    weights: dict[str, np.ndarray]
    toollist_digest: str
    version: str  # content hash of config, tokenizer and weights
    meta: dict = field(default_factory=dict)  # trainer kind and settings


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    config: PlannerConfig,
    tokenizer: PlanTokenizer,
    weights: Mapping[str, np.ndarray],
    toollist_digest: str,
    meta: Mapping | None = None,
    extra: Mapping[str, Callable[[Path], object]] | None = None,
    keep: int = 2,
) -> Path:
    """Write `checkpoint-<step>` under `output_dir` and keep only the `keep` newest.
    `extra` maps a file name to a function writing that file (the trainer state)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / ".tmp-checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed save
    tmp.mkdir()
    head = {
        "format": _FORMAT,
        "step": int(step),
        "model": config.to_dict(),
        "vocab_digest": tokenizer.vocab_digest,
        "toollist_digest": toollist_digest,
        "meta": dict(meta or {}),
    }
    (tmp / CONFIG).write_text(json.dumps(head, indent=2, default=str), encoding="utf-8")
    tokenizer.save(tmp / TOKENIZER)
    np.savez(tmp / WEIGHTS, **{k: np.asarray(v, np.float32) for k, v in weights.items()})
    for name, write in (extra or {}).items():
        write(tmp / name)
    target = output_dir / f"checkpoint-{int(step):07d}"
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for old in _checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(path: str | Path) -> Path | None:
    """`path` itself if it is a checkpoint, else its newest `checkpoint-*`, else None."""
    path = Path(path)
    if (path / CONFIG).is_file():
        return path
    found = _checkpoints(path)
    return found[-1] if found else None


def final_checkpoint(out: str | Path) -> Path:
    """The checkpoint a training run (`revision.planner.train`) ended with (`final.json`),
    else its newest; here, not in the trainer, so the service finds it without torch."""
    out = Path(out)
    meta = out / "final.json"
    if meta.is_file():
        return Path(json.loads(meta.read_text())["final"])
    found = (
        latest_checkpoint(out) or latest_checkpoint(out / "grpo") or latest_checkpoint(out / "sft")
    )
    if found is None:
        raise InputError(f"{out}: no planner checkpoint (train one with `revision planner train`)")
    return found


def load_checkpoint(
    path: str | Path,
    *,
    expected_vocab_digest: str | None = None,
    expected_toollist_digest: str | None = None,
) -> Checkpoint:
    """Read and check a checkpoint (or a training folder's newest one).

    Raises `MissingArtifactError` when there is none, `InputError` when its files are
    unreadable or inconsistent, `CheckpointMismatchError` when a digest differs."""
    folder = latest_checkpoint(path)
    if folder is None:
        raise MissingArtifactError(
            f"no planner checkpoint in {path}; train one first (SFT writes checkpoint-*/ there)"
        )
    try:
        raw = {name: (folder / name).read_bytes() for name in (CONFIG, TOKENIZER, WEIGHTS)}
    except OSError as e:
        raise InputError(f"planner checkpoint {folder} is incomplete: {e}") from e
    try:
        head = json.loads(raw[CONFIG])
        if head.get("format") != _FORMAT:
            raise ValueError(f"expected format {_FORMAT!r}")
        config = PlannerConfig.from_dict(head["model"])
        with np.load(folder / WEIGHTS, allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
    except _UNREADABLE as e:
        raise InputError(f"planner checkpoint {folder} is unreadable: {e}") from e
    tokenizer = PlanTokenizer.load(folder / TOKENIZER)
    if tokenizer.vocab_digest != head.get("vocab_digest"):
        raise InputError(f"planner checkpoint {folder}: tokenizer.json does not match config.json")
    if tokenizer.vocab_size != config.vocab_size or tokenizer.max_tool != config.max_tool:
        raise InputError(f"planner checkpoint {folder}: the tokenizer does not fit the model")
    if expected_vocab_digest is not None and expected_vocab_digest != tokenizer.vocab_digest:
        raise CheckpointMismatchError(
            f"planner checkpoint {folder} was trained with vocabulary {tokenizer.vocab_digest}, "
            f"but this run uses vocabulary {expected_vocab_digest}; reuse the checkpoint's "
            "tokenizer.json or start a new output folder"
        )
    toollist = str(head.get("toollist_digest", ""))
    if expected_toollist_digest is not None and expected_toollist_digest != toollist:
        raise CheckpointMismatchError(
            f"planner checkpoint {folder} was trained for tool list {toollist or '(none)'}, "
            f"but the current tool list is {expected_toollist_digest}; its tool indices would "
            "name other tools: retrain the planner on data built for the current tool list"
        )
    version = hashlib.sha256(b"".join(raw[n] for n in (CONFIG, TOKENIZER, WEIGHTS))).hexdigest()
    return Checkpoint(
        folder,
        int(head.get("step", 0)),
        config,
        tokenizer,
        weights,
        toollist,
        version[:16],
        dict(head.get("meta") or {}),
    )
