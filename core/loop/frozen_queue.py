"""A queue model that is cheap to refresh: a frozen pretrained encoder plus bootstrap heads.

The loop's usual queue model is the dataset's reward model, which changes only when a retrain (minutes to hours)
is promoted. With a *queue encoder* set (any transformers folder under the models folder, or a registered model:
e.g. all-MiniLM-L6-v2), the rescore job instead ranks with a frozen encoder's features and the ensemble's bootstrap
heads fitted on them from zero (``core.loop.ensemble.fit_heads`` with base margins 0):

    f(x) = mean over tokens of the encoder's last hidden state of the pair (prompt, response)
    r_k(x) = delta_k . f(x),   mu(x) = mean_k r_k(x)   (mu is the queue's "model reward": margins, the margin rule)

The encoder never trains, so a completion's features are computed once and cached beside the store
(``queue-features/<dataset id>-<encoder hash>.pt``); a refit is then K small logistic regressions plus the
features of texts not seen before: seconds, not a retrain. With ``refit_every`` N, the scheduler queues a
rescore after every N new human labels (``queue_refit_tick``), while full retrains of the team's model keep
their own cadence (``retrain_every``). A text longer than the encoder's max length (at most 512 tokens) gets no
features (never truncated): its item goes last, like an item over the reward model's max_length.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from storage.engine import Store

ENCODER_MAX_TOKENS = 512  # BERT-style encoders' position limit; a longer pair gets no features
ENCODE_BATCH = 32


class FrozenEncoder:
    """A transformers folder used as a frozen feature extractor (any AutoModel: an encoder, or a reward model's
    backbone), with a per-dataset cache of features by (prompt, response)."""

    def __init__(self, folder: Path, cache_file: Path | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if self.tokenizer.pad_token is None:  # a causal LM's tokenizer: any token pads, the mask hides it
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
        limit = getattr(self.tokenizer, "model_max_length", ENCODER_MAX_TOKENS) or ENCODER_MAX_TOKENS
        self.max_tokens = min(int(limit), ENCODER_MAX_TOKENS)
        self.cache_file = cache_file
        self.cache: dict[str, Any] = {}
        if cache_file is not None and cache_file.exists():
            self.cache = torch.load(cache_file)
        self.cache_misses = 0
        self.asked: set[str] = set()  # the keys this job asked for: what the dataset still needs

    @staticmethod
    def key(prompt: Any, response: str) -> str:
        return hashlib.sha256(json.dumps([prompt, response], sort_keys=True).encode()).hexdigest()

    def features(self, examples: list[tuple[Any, str]]) -> list[Any]:
        """Per (prompt, response): the mean-pooled last hidden state (float32), or None when the pair is longer
        than the encoder's max length. Cached texts are not encoded again."""
        import torch

        missing = list(dict.fromkeys(self.key(p, r) for p, r in examples if self.key(p, r) not in self.cache))
        todo = {self.key(p, r): (p, r) for p, r in examples}
        self.asked.update(todo)
        for start in range(0, len(missing), ENCODE_BATCH):
            batch = [todo[k] for k in missing[start:start + ENCODE_BATCH]]
            pairs = [(prompt_text(p), r) for p, r in batch]
            lengths = [len(self.tokenizer(p, r)["input_ids"]) for p, r in pairs]
            encoded = self.tokenizer([p for p, _ in pairs], [r for _, r in pairs], padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            for k, length, vector in zip(missing[start:start + ENCODE_BATCH], lengths, pooled, strict=True):
                self.cache[k] = None if length > self.max_tokens else vector.clone()
            self.cache_misses += len(batch)
        return [self.cache[self.key(p, r)] for p, r in examples]

    def save_cache(self) -> None:
        """Write the features this job asked for (a temporary file renamed over the old one). A rescore asks for
        every open item's and every labeled pair's texts, so what it did not ask for (items labeled away, archived or
        deleted since) is dropped: the cache follows the dataset instead of growing with every text it ever held."""
        import torch

        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        staging = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
        torch.save({k: v for k, v in self.cache.items() if k in self.asked}, staging)
        staging.replace(self.cache_file)
        # Another encoder's cache of this dataset is stale once this one ranks the queue.
        for other in self.cache_file.parent.glob(self.cache_file.name.split("-")[0] + "-*.pt"):
            if other != self.cache_file:
                other.unlink(missing_ok=True)


def prompt_text(prompt: Any) -> str:
    """A prompt as one text: a string as it is, a conversation as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)


def feature_cache_file(store: Store, dataset_id: int, folder: Path) -> Path:
    digest = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return store.data_dir / "queue-features" / f"{dataset_id}-{digest}.pt"


def heads_file(store: Store, dataset_id: int) -> Path:
    """The last refit's heads of a dataset with a queue encoder (with the human label count it was fitted at)."""
    return store.data_dir / "queue-heads" / f"{dataset_id}.pt"


def encoder_folder(store: Store, name: str) -> Path | None:
    """The folder of a queue encoder named by the user: a registered model, or a folder inside the models folder
    (``core.model_folders``: nobody loads an arbitrary server path); None when neither."""
    from core.model_folders import folder_under_models_root
    from storage.registry import find_model

    with store.read() as session:
        registered = find_model(session, name)
        path = registered.path if registered is not None else None
    if path and Path(path).is_dir():
        return Path(path)
    return folder_under_models_root(store, name)


def fit_frozen_heads(features_chosen: Any, features_rejected: Any, size: int, seed: int, weights: Any = None) -> Any:
    """``size`` bootstrap heads on frozen features, from zero (no model head to add to)."""
    import torch

    from core.loop.ensemble import fit_heads

    differences = features_chosen - features_rejected
    return fit_heads(differences, torch.zeros(len(differences)), size, seed=seed, weights=weights)


def labeled_features(store: Store, dataset: str, encoder: FrozenEncoder) -> tuple[Any, Any, Any, int]:
    """(chosen features, rejected features, weights, prompts) of the dataset's newest labeled pairs within the
    encoder's max length (``ENSEMBLE_PAIRS``), from the export's folded rows."""
    import torch

    from core.loop.ensemble import ENSEMBLE_PAIRS
    from core.preferences.pairs import NothingToExport, build_preference_rows, response_text

    try:
        rows = build_preference_rows(store, datasets=[dataset]).rows[-ENSEMBLE_PAIRS:]
    except NothingToExport:
        rows = []
    features = encoder.features([(row["prompt"], response_text(row[side])) for row in rows
                                 for side in ("chosen", "rejected")])
    kept = [i for i in range(len(rows)) if features[2 * i] is not None and features[2 * i + 1] is not None]
    prompts = len({json.dumps(rows[i]["prompt"], sort_keys=True) for i in kept})
    if not kept:
        return None, None, None, 0
    weights = torch.tensor([1.0 if rows[i].get("weight") is None else float(rows[i]["weight"]) for i in kept])
    return (torch.stack([features[2 * i] for i in kept]), torch.stack([features[2 * i + 1] for i in kept]),
            weights, prompts)


def refit_queue_heads(store: Store, dataset: str, dataset_id: int, encoder: FrozenEncoder, size: int,
                      human_labels: int, log: Callable[[str], None]) -> Any:
    """Fit and keep the dataset's queue heads (None, with a log line, below ``MIN_ENSEMBLE_PAIRS`` labeled prompts)."""
    import torch

    from core.limits import MIN_ENSEMBLE_PAIRS

    chosen, rejected, weights, prompts = labeled_features(store, dataset, encoder)
    if prompts < MIN_ENSEMBLE_PAIRS:
        log(f"the queue encoder's heads need labels on {MIN_ENSEMBLE_PAIRS} prompts within its max length, {dataset} "
            f"has {prompts}: items are served in import order until it has")
        heads = None
    else:
        log(f"fitting {size} heads on {len(chosen)} labeled pair(s) of {prompts} prompt(s) on frozen "
            f"{encoder.folder.name} features ({encoder.cache_misses} text(s) encoded, the rest cached)")
        heads = fit_frozen_heads(chosen, rejected, size, seed=dataset_id, weights=weights)
    path = heads_file(store, dataset_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"encoder": str(encoder.folder), "heads": heads, "human_labels": human_labels}, staging)
    staging.replace(path)
    return heads


def last_refit_labels(store: Store, dataset_id: int) -> int:
    """The human label count the dataset's queue heads were last fitted at (0 before the first fit)."""
    import torch

    path = heads_file(store, dataset_id)
    return int(torch.load(path)["human_labels"]) if path.exists() else 0


def queue_refit_tick(store: Store) -> list[int]:
    """Queue a rescore for each dataset with a queue encoder and ``refit_every`` N whose human labels grew by N
    since its heads were last fitted, unless a rescore is queued or running (the job scheduler calls this).
    Returns the jobs queued."""
    from storage.datasets import dataset_by_name
    from storage.loop import human_label_count, loop_job_active, queue_loop_job
    from storage.settings import queue_encoders

    with store.read() as session:
        due = []
        for dataset, entry in sorted(queue_encoders(session).items()):
            every = int(entry.get("refit_every") or 0)
            target = dataset_by_name(session, dataset)  # a dataset renamed or gone since: nothing to refit
            if target is None or not every or target.archived or target.queue_order != "uncertainty":
                continue
            if human_label_count(session, target.id) - last_refit_labels(store, target.id) >= every:
                due.append(dataset)
    queued = []
    for dataset in due:
        with store.write() as session:
            if not loop_job_active(session, dataset, "rescore"):
                queued.append(queue_loop_job(session, dataset, "rescore", {}))
    return queued
