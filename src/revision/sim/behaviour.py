"""How a simulated user reacts to a response: which results they examine, click and buy.

Split from the traffic loop so the model of a user can be read (and changed) on its own. A
human examines rank r with probability `top * r ** (-eta / patience)` (a summary cue makes them
more patient, a label draws the eye to its result), clicks a result that serves their hidden
intent with `click_p` and any other with `stray_click_p`, may buy what they clicked, and may
go on after a click. A bot clicks its first result now and then. All randomness comes in as
per-request uniform (`u`) and normal (`z`) draws made before any search, so two searchers
shown to the same users differ only where their responses do (common random numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from revision.sim.intents import INFO, UserState, satisfied, satisfies

MAX_EXAMINED = 20  # users never look past this rank
UNIFORMS = 4 * MAX_EXAMINED + 2  # uniform draws per request (see `react`)
NORMALS = 3 * MAX_EXAMINED  # normal draws per request


@dataclass
class Reaction:
    """What one request's user did: clicks (product, ts ms, dwell s), orders (product, ts ms),
    and whether the response served the hidden intent (None for bots)."""

    clicks: list[tuple[str, int, float]] = field(default_factory=list)
    orders: list[tuple[str, int]] = field(default_factory=list)
    satisfied: bool | None = None


def _lognormal(spec, z: float) -> float:
    return spec.median * math.exp(spec.sigma * z)


class UserBehaviour:
    """The world's behaviour model over the catalog rows (`product_id -> row`)."""

    def __init__(self, world, rows, params, purchase_p: dict[str, float]):
        self.world, self.rows, self.params = world, rows, params
        self.purchase = purchase_p
        info = world.intents.info
        self.click_exact_p = info.click_exact_p if info is not None else 0.0
        self._satisfies_memo: dict[tuple, tuple[bool, ...]] = {}

    def bot(self, pids: list[str], ts: int, click_p: float, u) -> Reaction:
        out = Reaction()
        if pids and u[4 * MAX_EXAMINED] < click_p:
            out.clicks.append((pids[0], ts + int(300 + 900 * u[0]), 0.2 + 1.3 * u[1]))
        return out

    def satisfaction(self, intent, target, preferred, pids, cues, response, memo_key=None):
        """(per result: does it serve the intent, does the response as a whole). `memo_key`
        (a photo id) reuses the per-result answers of a response without cues."""
        rows, params = self.rows, self.params
        state = UserState(preferred)
        trow = rows[target]
        key = None if cues or memo_key is None else (memo_key, intent, preferred)
        sats = self._satisfies_memo.get(key) if key is not None else None
        if sats is None:
            sats = tuple(
                satisfies(intent, trow, rows[p], cues, state, params) if p in rows else False
                for p in pids
            )
            if key is not None:
                self._satisfies_memo[key] = sats
        whole = (
            satisfied(intent, trow, response, products=rows, user=state, params=params, cues=cues)
            if cues
            else any(sats)
        )
        return sats, whole

    def human(
        self,
        *,
        intent: str,
        target: str,
        pids: list[str],
        ranks: list[int],
        sats: tuple[bool, ...],
        cues: list,
        patience: float,
        ts: int,
        u,
        z,
    ) -> Reaction:
        """Examination, clicks and orders of one human request (draw layout: `u[j]` examine,
        `u[K + j]` click, `u[2K + j]` go on, `u[3K + j]` buy; `z[j]` dwell, `z[K + j]` delay,
        `z[2K + j]` order delay, with K = MAX_EXAMINED)."""
        beh, k_max = self.world.behaviour, MAX_EXAMINED
        cd = beh.click_delay
        out = Reaction()
        labelled = {c.get("product_id") for c in cues if c.get("type") == "label"}
        if any(c.get("type") == "summary" for c in cues):
            patience *= beh.summary_patience
        exponent = beh.examination.eta / patience
        last_t = last_dwell = None
        for j in range(min(len(pids), k_max)):
            e = beh.examination.top * ranks[j] ** -exponent
            if labelled and pids[j] in labelled:
                e = max(e, beh.label_examine)
            if u[j] >= e:
                continue
            if sats[j]:
                p = beh.click_p
            elif intent == INFO and pids[j] == target:
                p = self.click_exact_p
            else:
                p = beh.stray_click_p
            if u[k_max + j] >= p:
                continue
            if last_t is None:
                delay = (cd.median_s + cd.per_rank_s * (ranks[j] - 1)) * math.exp(
                    cd.sigma * z[k_max + j]
                )
                t_click = ts + int(delay * 1000)
            else:
                gap = _lognormal(beh.next_click_gap_s, z[k_max + j])
                t_click = last_t + int((last_dwell + gap) * 1000)
            dwell = _lognormal(beh.dwell.satisfied if sats[j] else beh.dwell.other, z[j])
            out.clicks.append((pids[j], t_click, dwell))
            buy_p = self.purchase[intent] if sats[j] else beh.stray_purchase_p
            if u[3 * k_max + j] < buy_p:
                delay = _lognormal(beh.order_delay_s, z[2 * k_max + j])
                out.orders.append((pids[j], t_click + int((dwell + delay) * 1000)))
            last_t, last_dwell = t_click, dwell
            if u[2 * k_max + j] >= beh.continue_after_click:
                break
        return out
