"""The reward models a server scores with (and ``check-server`` compares against), loaded by name,
with what the registry knows about each, the reference samples, and the normalizers fitted on them.

Names resolve as for ``score``: a registered ``name@vN`` (or a plain name, its newest version), else
a local folder; never the hub (``core.scoring.model_names``). A registered model is scored with the
``max_length`` it was trained with, so what training would have dropped is flagged, not truncated.

Reference samples, in order of preference: the rows of ``--samples``; the held-out pairs (then the
training pairs) of the first registered model's training snapshot, rebuilt from the store with the
job's own filters and split; a few built-in probes (text and chat, with and without thinking, short
to long) for a folder with neither. The parity check scores the first ``parity_samples`` of them;
``--normalize`` fits each model's z-score on up to ``MAX_REFERENCE_SAMPLES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.limits import MAX_REFERENCE_SAMPLES
from core.config_fields import ConfigError
from core.preferences.pairs import build_preference_rows, response_text, split_rows
from core.scoring.engine import Prompt, RewardScorer
from core.scoring.evaluation import read_score_rows
from core.scoring.model_names import existing_folder, model_folder_for, recorded_max_length, registry_store
from core.serving.reward_fn import RewardNormalizer
from storage.engine import Store
from storage.models import RegisteredModel
from storage.registry import VERSION_SEPARATOR, find_model


_LONG_REASONING = " ".join(["we add the tens, then the ones, and check the sum again before we answer"] * 40)
BUILTIN_PROBES: list[tuple[Prompt, str]] = [
    ("What is 2 + 2? ", "4"),
    ("What is 2 + 2? ", "It is 4, because two and two make four."),
    ("Name a color. ", "<think>Any color works; blue is common.</think> Blue."),
    ("Summarise the plot of a long novel. ", "A family moves to the coast. " * 12),
    ("Solve 37 + 48. ", f"<think>{_LONG_REASONING}</think> 85"),
    ([{"role": "user", "content": "Name a color."}], "Blue."),
    ([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 3 + 4?"}],
     "<think>three plus four</think> 7"),
    ([{"role": "user", "content": "Explain addition."}], "Addition combines two numbers into their total. " * 6),
]


@dataclass(frozen=True)
class RegistryEntry:
    """What the registry says about a served model (shown by ``/info``)."""

    name: str
    version: int
    config: dict[str, Any]
    data_hash: str | None
    n_pairs: int | None
    eval_accuracy: float | None
    created_at: str

    @classmethod
    def of(cls, record: RegisteredModel) -> "RegistryEntry":
        _, separator, number = record.name.rpartition(VERSION_SEPARATOR)
        version = int(number) if separator and number.isdigit() else 1
        return cls(record.name, version, dict(record.config or {}), record.data_hash, record.n_pairs,
                   record.eval_accuracy, record.created_at.isoformat())


@dataclass
class ServedModel:
    reference: str  # the name it was asked for: name, name@vN or a folder
    scorer: RewardScorer
    registry: RegistryEntry | None
    normalizer: RewardNormalizer | None = None
    heads: Any = None  # the loop's ensemble heads (members x features), or None: see ``load_ensemble_heads``
    heads_source: str | None = None  # the file and the model the heads were fitted on, in words

    def info(self) -> dict[str, Any]:
        scorer = self.scorer
        entry = self.registry
        return {
            "model": self.reference,
            "registered_name": entry.name if entry else None,
            "version": entry.version if entry else None,
            "training_config": entry.config if entry else None,
            "data_hash": entry.data_hash if entry else None,
            "n_pairs": entry.n_pairs if entry else None,
            "eval_accuracy": entry.eval_accuracy if entry else None,
            "registered_at": entry.created_at if entry else None,
            "max_length": scorer.max_length,
            "architecture": type(scorer.hf_model).__name__,
            "dtype": str(scorer.dtype).removeprefix("torch."),
            "device": str(scorer.device),
            "decoder": scorer.is_decoder,
            "eos_token": scorer.eos_token,
            "chat_template": bool(getattr(scorer.tokenizer, "chat_template", None)),
            "normalizer": None if self.normalizer is None else {
                "mean": self.normalizer.mean, "std": self.normalizer.std, "clip": self.normalizer.clip},
            "ensemble_heads": None if self.heads is None else {"members": len(self.heads), "source": self.heads_source},
        }


@dataclass(frozen=True)
class ReferenceSamples:
    samples: list[tuple[Prompt, str]]
    source: str  # where they came from, in words (printed at start, shown by /info)
    for_normalizing: bool  # from real data (given or the training snapshot), not the built-in probes


def load_served_models(config: Any, *, batch_tokens: int = 1024, device: str | None = None
                       ) -> tuple[list[ServedModel], ReferenceSamples]:
    """Load ``config.model`` (a ``RewardModelsConfig``), find the reference samples and, with
    ``config.normalize``, fit each model's normalizer on them. Raises ``UnknownModel`` or
    ``ModelLoadError`` for a model, ``InputRejected`` for a bad ``--samples`` file, ``ConfigError``
    for ``--normalize`` without real reference samples; before any model loads where it can."""
    store = registry_store(config.db)
    try:
        located = [_locate(store, name) for name in config.model]
        given = read_score_rows(config.samples) if config.samples else None
        models = [ServedModel(name, RewardScorer(folder, device=device, dtype=config.torch_dtype, batch_tokens=batch_tokens,
                                                 max_length=recorded_max_length(entry.config if entry else None)), entry)
                  for name, folder, entry in located]
        if given is not None:
            samples = ReferenceSamples([(prompt, response) for _, prompt, response in given[:MAX_REFERENCE_SAMPLES]],
                                       f"{min(len(given), MAX_REFERENCE_SAMPLES)} rows of {config.samples}", True)
        else:
            samples = _snapshot_samples(store, [entry for _, _, entry in located if entry is not None])
    finally:
        if store is not None:
            store.dispose()
    if config.normalize:
        if not samples.for_normalizing:
            raise ConfigError("--normalize needs reference samples of real data: serve a model RewardLab trained and "
                              "registered (its training snapshot is used), or pass --samples FILE (prompt, response rows)")
        for model in models:
            model.normalizer = fit_normalizer(model.scorer, samples.samples)
    return models, samples


def _locate(store: Store | None, name: str) -> tuple[str, str, RegistryEntry | None]:
    record, entry = None, None
    if store is not None:
        with store.read() as session:
            record = find_model(session, name)
            entry = RegistryEntry.of(record) if record is not None else None
    if record is not None:
        return name, record.path, entry
    return name, model_folder_for(store, name, local_folder=existing_folder), None


def fit_normalizer(scorer: RewardScorer, samples: list[tuple[Prompt, str]]) -> RewardNormalizer:
    """A z-score fitted on the model's rewards of the samples that fit its max_length (the engine's
    own path, so the server and ``check-server`` fit the same numbers). Raises ``ConfigError`` with
    fewer than two such samples."""
    formatted = [scorer.format(prompt, response).ids for prompt, response in samples]
    rewards = scorer.score_ids([ids for ids in formatted if not scorer.max_length or len(ids) <= scorer.max_length])
    if len(rewards) < 2:
        raise ConfigError(f"--normalize: only {len(rewards)} reference sample(s) fit {scorer.name}'s max_length "
                          f"{scorer.max_length}; give more with --samples")
    return RewardNormalizer.fit(rewards)


def _snapshot_samples(store: Store | None, entries: list[RegistryEntry]) -> ReferenceSamples:
    """The first registered model's training data rebuilt as its job built it (filters, split, seed):
    held-out pairs first. Built-in probes when no model came from a RewardLab training job."""
    for entry in entries:
        config = entry.config
        if store is None or not {"eval_fraction", "seed"} <= config.keys():
            continue
        since = config.get("labels_since")
        try:
            prepared = build_preference_rows(store, since=datetime.fromisoformat(since) if since else None,
                                             annotators=config.get("annotators"), datasets=config.get("dataset"),
                                             aggregate=config.get("aggregate", "majority"),
                                             soft_labels=config.get("soft_labels", False))
        except ValueError:  # a dataset renamed or a mix of kinds since: no snapshot to rebuild
            continue
        train, held_out = split_rows(prepared.rows, config["eval_fraction"], config["seed"])
        rows = (held_out + train)[: MAX_REFERENCE_SAMPLES // 2]
        if not rows:
            continue
        samples = [(row["prompt"], response_text(row[side])) for row in rows for side in ("chosen", "rejected")]
        changed = "" if prepared.content_hash == entry.data_hash else \
            " (the store's labels changed since training: today's pairs under the job's filters)"
        return ReferenceSamples(samples, f"{len(samples)} responses of {len(held_out)} held-out pairs, then training "
                                f"pairs, of {entry.name}'s training snapshot{changed}", True)
    return ReferenceSamples(list(BUILTIN_PROBES), f"{len(BUILTIN_PROBES)} built-in probes (no --samples, and no "
                            "registered model trained by RewardLab to take its held-out pairs from)", False)


def load_ensemble_heads(model: ServedModel, path: Any) -> None:
    """Attach the loop's bootstrap heads (``ensemble-heads.pt``, saved by a rescore job with ensemble
    uncertainty: ``{"model", "heads"}``, members x features, ``core.loop.ensemble``) to ``model``, whose
    rewards then carry their spread over the members. Raises ``ConfigError`` for a file that is not such heads,
    heads of another width than the model's score head, or an encoder model."""
    import pickle

    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        heads = saved["heads"]
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise ConfigError(f"--heads {path}: not the loop's ensemble heads (a rescore job's ensemble-heads.pt): "
                          f"{error}") from None
    scorer = model.scorer
    if not scorer.is_decoder:
        raise ConfigError(f"--heads: {model.reference} is an encoder (bidirectional) model; the ensemble heads read "
                          "a decoder's reward-token features")
    width = scorer.head.in_features
    if not isinstance(heads, torch.Tensor) or heads.dim() != 2 or heads.shape[1] != width or len(heads) < 2:
        shape = tuple(heads.shape) if isinstance(heads, torch.Tensor) else type(heads).__name__
        raise ConfigError(f"--heads {path}: heads of shape {shape} do not fit {model.reference}, whose score head "
                          f"reads {width} features: give the heads fitted on this model (2 or more members)")
    model.heads = heads.float()
    model.heads_source = f"{path} ({len(heads)} heads fitted on {saved.get('model', 'an unnamed model')})"
