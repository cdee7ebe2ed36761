"""The in-process planner the service uses: a checkpoint decoded greedily in numpy.

Everything that can be wrong with a checkpoint is checked in `load`, loudly. `plan` then never
raises: a request it cannot read (features of the wrong size, say) is logged and answered with
the empty plan, which means "no tool" and leaves the search untouched.

Run it with numpy's BLAS on one thread (threadpoolctl, or OPENBLAS_NUM_THREADS=1): on these
small matrices extra BLAS threads only add synchronisation, several-fold under load.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from revision.planner._base import PlannerFeatures
from revision.planner.checkpoint import load_checkpoint
from revision.planner.infer import NumpyDecoder, plan_ids
from revision.planner.tokenizer import BOS, THINK, PlanTokenizer
from revision.tools.grammar import Completion, parse_completion

log = logging.getLogger(__name__)
EMPTY = Completion("", ())


class EmbeddedPlanner:
    """Implements `revision.planner._base.Planner`; build it with `EmbeddedPlanner.load`."""

    def __init__(
        self, decoder: NumpyDecoder, tokenizer: PlanTokenizer, version: str, toollist_digest: str
    ):
        self.decoder, self.tokenizer = decoder, tokenizer
        self.version, self.toollist_digest = version, toollist_digest

    @classmethod
    def load(
        cls, checkpoint_dir: str | Path, expected_toollist_digest: str | None = None
    ) -> EmbeddedPlanner:
        """A checkpoint folder, or a training folder (its newest checkpoint). Raises a
        `revision.errors` error when it is missing, unreadable or made for another tool list."""
        ckpt = load_checkpoint(checkpoint_dir, expected_toollist_digest=expected_toollist_digest)
        decoder = NumpyDecoder(ckpt.weights, ckpt.config)
        return cls(decoder, ckpt.tokenizer, ckpt.version, ckpt.toollist_digest)

    def plan(self, features: PlannerFeatures, live: Collection[int]) -> Completion:
        try:
            ids = plan_ids(self.decoder, features, live)
            return parse_completion(self.tokenizer.decode([BOS, THINK, *ids]), set(live))
        except Exception as e:  # the service must get a plan; the empty one changes nothing
            log.warning("planner %s could not plan this request: %s", self.version, e)
        return EMPTY
