"""Queue keys: the order in which the loop serves a dataset's open items, and which arm each is in."""

from __future__ import annotations

import hashlib
from typing import Any

from storage.loop import QueueKey


def _unit_hash(*parts: Any) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def arm_of(dataset_id: int, comparison_id: int, random_fraction: float) -> str:
    """The arm an item is in: the same for the item whenever it is scored (a hash, not a draw)."""
    return "random" if _unit_hash("arm", dataset_id, comparison_id) < random_fraction else "uncertainty"


def queue_keys(dataset_id: int, margins: dict[int, float | None], random_fraction: float,
               spreads: dict[int, float | None] | None = None) -> list[QueueKey]:
    """Keys in [0, 1): the uncertainty arm by rank of margin (smallest first) or, given ``spreads``
    (an ensemble's disagreement), by rank of spread (largest first); an item the model could not
    score (e.g. longer than its max_length) last. The random arm by a hash of the item, so the two
    arms interleave with the random arm at its share."""
    arms = {cid: arm_of(dataset_id, cid, random_fraction) for cid in margins}
    order = margins if spreads is None else {cid: None if v is None else -v for cid, v in spreads.items()}
    uncertain = sorted((cid for cid in margins if arms[cid] == "uncertainty"),
                       key=lambda cid: (order[cid] is None, order[cid] if order[cid] is not None else 0.0, cid))
    keys = [QueueKey(cid, margins[cid], rank / max(1, len(uncertain)), "uncertainty")
            for rank, cid in enumerate(uncertain)]
    keys += [QueueKey(cid, margins[cid], _unit_hash("order", dataset_id, cid), "random")
             for cid in margins if arms[cid] == "random"]
    return keys
