"""The rescore job: score a dataset's open items with its queue model (margins, or an ensemble's
disagreement) and write their queue keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from core.loop.acquisition import NEEDS_ENSEMBLE, choose_pair
from core.loop.queue_keys import queue_keys
from core.limits import MIN_ENSEMBLE_PAIRS
from core.loop.settings import SCORE_CHUNK, LoopError, queue_model_of
from storage.datasets import require_dataset
from storage.engine import Store
from storage.loop import QueueKey, open_item_ids, pair_completions, write_queue_keys
from storage.settings import acquisition_of, queue_encoder_of
from storage.queries import comparison_contents
from storage.ranking import completion_texts, slots_of


def scorer_for(store: Store, model: str) -> Any:
    """The scorer of a loop's model (registered name, or a folder under the models folder), with the
    max_length it was trained with: what the rescore job and the loop's evaluation both score with."""
    from core.model_folders import folder_under_models_root
    from core.scoring.inspection import load_scorer
    from core.scoring.model_names import model_folder_for, trained_max_length

    folder = model_folder_for(store, model, local_folder=lambda path: folder_under_models_root(store, path))
    return load_scorer(str(folder), trained_max_length(store, model))


def _ensemble_heads(store: Store, dataset: str, dataset_id: int, scorer: Any, size: int,
                    log: Callable[[str], None]) -> Any:
    """The ensemble's residual heads, fitted on the dataset's newest labeled pairs (None, with a log
    line, when there are too few: the queue is ordered by margin until there are enough)."""
    import torch

    from core.preferences.pairs import NothingToExport, build_preference_rows, response_text
    from core.loop.ensemble import ENSEMBLE_PAIRS, fit_heads

    try:
        rows = build_preference_rows(store, datasets=[dataset]).rows[-ENSEMBLE_PAIRS:]
    except NothingToExport:
        rows = []
    examples = [(row["prompt"], response_text(row[side])) for row in rows for side in ("chosen", "rejected")]
    features = scorer.reward_features(examples)
    kept = [i for i in range(len(rows)) if features[2 * i] is not None and features[2 * i + 1] is not None]
    # Counted in labeled items (prompts), not pairs: one ranking of 9 completions gives 36 pairs.
    prompts = len({json.dumps(rows[i]["prompt"], sort_keys=True) for i in kept})
    if prompts < MIN_ENSEMBLE_PAIRS:
        log(f"ensemble uncertainty needs labels on {MIN_ENSEMBLE_PAIRS} prompts within max_length, {dataset} has "
            f"{prompts}: ordered by the model's margin until it has")
        return None
    chosen, rejected = torch.stack([features[2 * i] for i in kept]), torch.stack([features[2 * i + 1] for i in kept])
    margins = _head_rewards(scorer, chosen) - _head_rewards(scorer, rejected)
    # A ranking's pairs weigh 1/C(K,2), as in training, so one ranking counts as one label.
    weights = torch.tensor([1.0 if rows[i].get("weight") is None else float(rows[i]["weight"]) for i in kept])
    log(f"fitting {size} ensemble heads on {len(kept)} labeled pair(s) of {prompts} prompt(s)")
    return fit_heads(chosen - rejected, margins, size, seed=dataset_id, weights=weights)


def _head_rewards(scorer: Any, features: Any) -> Any:
    """The model's own rewards from reward-token features (its score head applied to them)."""
    import torch

    with torch.inference_mode():
        return scorer.head(features.to(scorer.device, scorer.dtype)).squeeze(-1).float().cpu()


def _item_margins(store: Store, scorer: Any, item_ids: list[int],
                  heads: Any = None) -> tuple[dict[int, float | None], dict[int, float | None]]:
    """|r(a) - r(b)| of each pair, the smallest gap between two completions of a ranking item; None
    when a text is over the model's max_length (never truncated). With ensemble ``heads``, also each
    item's disagreement (``core.loop.ensemble``; a ranking item: the largest over its pairs)."""
    with store.read() as session:
        slots = slots_of(session, item_ids)
        contents = comparison_contents(session, item_ids)  # prompts of pairs and ranking items alike
        texts = completion_texts(session, [c for ids in slots.values() for c in ids])
    examples: list[tuple[Any, str]] = []
    spans: dict[int, tuple[int, int]] = {}
    for item_id in item_ids:
        content = contents[item_id]
        prompt = content.prompt_messages if content.prompt_messages is not None else (content.prompt_text or "")
        responses = [texts[c][0] for c in slots[item_id]] if item_id in slots else [content.a_text, content.b_text]
        spans[item_id] = (len(examples), len(examples) + len(responses))
        examples += [(prompt, response) for response in responses]
    margins: dict[int, float | None] = {}
    spreads: dict[int, float | None] = {}
    if heads is None:
        rewards_of = [None if r.exceeds_max_length else r.reward for r in scorer.score_responses(examples)]
    else:  # one pass gives both: the model's reward is its head applied to the features
        import torch

        from core.loop.ensemble import disagreement, member_rewards

        features = scorer.reward_features(examples)
        known = [i for i, f in enumerate(features) if f is not None]
        rewards_of = [None] * len(examples)
        if known:
            for i, reward in zip(known, _head_rewards(scorer, torch.stack([features[i] for i in known])).tolist(),
                                 strict=True):
                rewards_of[i] = reward
    for item_id, (start, end) in spans.items():
        chunk = rewards_of[start:end]
        if any(r is None for r in chunk):
            margins[item_id] = spreads[item_id] = None
            continue
        ordered = sorted(chunk)
        margins[item_id] = min(b - a for a, b in zip(ordered, ordered[1:]))
        if heads is not None:
            members = member_rewards(heads, torch.stack(features[start:end]), torch.tensor(chunk))
            spreads[item_id] = max(disagreement(members[:, i], members[:, j])
                                   for i in range(end - start) for j in range(i + 1, end - start))
    return margins, spreads


def _queue_state(store: Store, dataset: str) -> tuple:
    """(dataset id, random fraction, uncertainty, ensemble size, open item ids, acquisition rule, human labels)."""
    from storage.loop import human_label_count

    with store.read() as session:
        target = require_dataset(session, dataset)
        return (target.id, target.random_fraction, target.uncertainty, target.ensemble_size,
                open_item_ids(session, target.id), acquisition_of(session, dataset), human_label_count(session, target.id))


def rescore_queue(store: Store, dataset: str, *, log: Callable[[str], None] = print,
                  work_dir: Path | None = None) -> str:
    """Score the open items of ``dataset`` with its queue model and store their margins, arms and
    queue keys (the job of kind ``rescore``). With ensemble uncertainty, the heads are fitted first
    and saved to ``work_dir / "ensemble-heads.pt"`` when given. Returns the job's note: how many
    items were scored, by what (and why margin, when an ensemble was asked for but could not be fitted)."""
    with store.read() as session:
        encoder_entry = queue_encoder_of(session, dataset)
    if encoder_entry is not None:
        return _rescore_with_frozen_encoder(store, dataset, encoder_entry["folder"], log=log, work_dir=work_dir)
    model = queue_model_of(store, dataset)
    if not model:
        raise LoopError(f"dataset {dataset!r} has no model to score its queue (set one with --model)")
    dataset_id, fraction, uncertainty, ensemble_size, item_ids, acquisition, _ = _queue_state(store, dataset)
    scorer = scorer_for(store, model)
    fallback: list[str] = []
    heads = _ensemble_heads(store, dataset, dataset_id, scorer, ensemble_size, fallback.append) \
        if uncertainty == "ensemble" or acquisition in NEEDS_ENSEMBLE else None
    for line in fallback:
        log(line)
    if heads is not None and work_dir is not None:
        import torch

        work_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model, "heads": heads}, work_dir / "ensemble-heads.pt")
    log(f"scoring {len(item_ids)} open item(s) of {dataset} with {model}"
        + (f" and {len(heads)} ensemble heads" if heads is not None else ""))
    margins: dict[int, float | None] = {}
    spreads: dict[int, float | None] | None = {} if heads is not None and uncertainty == "ensemble" else None
    for start in range(0, len(item_ids), SCORE_CHUNK):
        chunk_margins, chunk_spreads = _item_margins(store, scorer, item_ids[start:start + SCORE_CHUNK],
                                                     heads if spreads is not None else None)
        margins.update(chunk_margins)
        if spreads is not None:
            spreads.update(chunk_spreads)
        log(f"scored {min(start + SCORE_CHUNK, len(item_ids))}/{len(item_ids)}")
    keys = queue_keys(dataset_id, margins, fraction, spreads)
    chosen_note = ""
    if acquisition != "all":
        keys, chosen_note = _acquire(store, _model_rewards(scorer, heads), heads is not None, dataset_id, item_ids,
                                     keys, acquisition, work_dir, log)
    for start in range(0, len(keys), SCORE_CHUNK):  # short write transactions: labeling goes on meanwhile
        with store.write() as session:
            write_queue_keys(session, keys[start:start + SCORE_CHUNK])
    how = (f"the disagreement of {len(heads)} ensemble heads on {model}" if spreads is not None
           else f"{model}'s margins" + (f" ({fallback[0]})" if fallback else "")) + chosen_note
    log(f"queue of {dataset} ordered by {how}: {sum(k.arm == 'random' for k in keys)} item(s) in the random arm")
    return f"ordered the queue of {dataset} by {how}: {len(keys)} item(s) scored"


def _model_rewards(scorer: Any, heads: Any) -> Callable:
    """(prompt, texts) -> (indices of the texts within max_length, the model's rewards, members' rewards or None)."""
    def rewards(prompt: Any, responses: list[str]) -> tuple[list[int], Any, Any]:
        import torch

        from core.loop.ensemble import member_rewards

        features = scorer.reward_features([(prompt, text) for text in responses])
        usable = [i for i, f in enumerate(features) if f is not None]
        if not usable:
            return usable, None, None
        stacked = torch.stack([features[i] for i in usable])
        base = _head_rewards(scorer, stacked)
        return usable, base, member_rewards(heads, stacked, base) if heads is not None else None

    return rewards


def _frozen_rewards(encoder: Any, heads: Any) -> Callable:
    """Like ``_model_rewards`` on a frozen encoder: the members' rewards delta_k . f(x), their mean as the base."""
    def rewards(prompt: Any, responses: list[str]) -> tuple[list[int], Any, Any]:
        import torch

        features = encoder.features([(prompt, text) for text in responses])
        usable = [i for i, f in enumerate(features) if f is not None]
        if not usable or heads is None:
            return usable, None, None
        members = heads @ torch.stack([features[i] for i in usable]).T
        return usable, members.mean(0), members

    return rewards


def _rescore_with_frozen_encoder(store: Store, dataset: str, folder_name: str, *, log: Callable[[str], None],
                                 work_dir: Path | None) -> str:
    """The rescore job with a queue encoder (``core.loop.frozen_queue``): refit the heads on cached frozen
    features, then key the open items by the heads' mean margins (or their disagreement, with ensemble
    uncertainty) and apply the dataset's acquisition rule on the same members."""
    from core.loop.ensemble import disagreement
    from core.loop.frozen_queue import FrozenEncoder, encoder_folder, feature_cache_file, refit_queue_heads

    folder = encoder_folder(store, folder_name)
    if folder is None:
        raise LoopError(f"the queue encoder {folder_name!r} of {dataset!r} is neither a registered model nor a folder "
                        "inside the models folder any more: set another with --queue-encoder")
    dataset_id, fraction, uncertainty, ensemble_size, item_ids, acquisition, labels = _queue_state(store, dataset)
    encoder = FrozenEncoder(folder, feature_cache_file(store, dataset_id, folder))
    heads = refit_queue_heads(store, dataset, dataset_id, encoder, ensemble_size, labels, log)
    rewards = _frozen_rewards(encoder, heads)
    margins: dict[int, float | None] = {}
    spreads: dict[int, float | None] | None = {} if heads is not None and uncertainty == "ensemble" else None
    for start in range(0, len(item_ids), SCORE_CHUNK):
        chunk = item_ids[start:start + SCORE_CHUNK]
        with store.read() as session:
            slots = slots_of(session, chunk)
            contents = comparison_contents(session, chunk)
            texts = completion_texts(session, [c for ids in slots.values() for c in ids])
        for item_id in chunk:
            content = contents[item_id]
            prompt = content.prompt_messages if content.prompt_messages is not None else (content.prompt_text or "")
            responses = [texts[c][0] for c in slots[item_id]] if item_id in slots else [content.a_text, content.b_text]
            usable, mean, members = rewards(prompt, responses)
            if mean is None or len(usable) < len(responses):
                margins[item_id] = None
                if spreads is not None:
                    spreads[item_id] = None
                continue
            ordered = sorted(mean.tolist())
            margins[item_id] = min(b - a for a, b in zip(ordered, ordered[1:]))
            if spreads is not None:
                spreads[item_id] = max(disagreement(members[:, i], members[:, j])
                                       for i in range(len(responses)) for j in range(i + 1, len(responses)))
        log(f"scored {min(start + SCORE_CHUNK, len(item_ids))}/{len(item_ids)}")
    keys = queue_keys(dataset_id, margins, fraction, spreads)
    note = ""
    if acquisition != "all":
        keys, note = _acquire(store, rewards, heads is not None, dataset_id, item_ids, keys, acquisition, work_dir,
                              log)
    for start in range(0, len(keys), SCORE_CHUNK):
        with store.write() as session:
            write_queue_keys(session, keys[start:start + SCORE_CHUNK])
    encoder.save_cache()
    if heads is not None and work_dir is not None:
        import torch

        work_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"encoder": str(folder), "heads": heads, "human_labels": labels}, work_dir / "ensemble-heads.pt")
    how = (f"{len(heads)} heads on frozen {folder.name} features ("
           + ("their disagreement" if spreads is not None else "their mean margins") + ")" if heads is not None
           else f"import order (too few labeled prompts for heads on frozen {folder.name} features)") + note
    log(f"queue of {dataset} ordered by {how}: {sum(k.arm == 'random' for k in keys)} item(s) in the random arm")
    return f"ordered the queue of {dataset} by {how}: {len(keys)} item(s) scored"


def _acquire(store: Store, rewards_of: Callable, have_heads: bool, dataset_id: int, item_ids: list[int],
             keys: list[QueueKey], rule: str, work_dir: Path | None,
             log: Callable[[str], None]) -> tuple[list[QueueKey], str]:
    """Per prompt with two or more open pairs, the pair ``rule`` picks keeps its key; the prompt's other open pairs
    are held back (key + 1: after every chosen pair). The choices, with the rule, its parameters and each
    completion's mean and spread, go to ``work_dir / "acquisition.json"``. Returns the keys and a note."""
    if rule in NEEDS_ENSEMBLE and not have_heads:
        log(f"the {rule} rule needs the ensemble's heads, which could not be fitted: every pair is served")
        return keys, f"; {rule} needs the ensemble's heads: every pair served"
    with store.read() as session:
        pairs = pair_completions(session, item_ids)
        texts = completion_texts(session, sorted({c for _, a, b in pairs.values() for c in (a, b)}))
        contents = comparison_contents(session, sorted(pairs))
    by_prompt: dict[int, list[int]] = {}
    for item_id, (prompt_id, _, _) in sorted(pairs.items()):
        by_prompt.setdefault(prompt_id, []).append(item_id)
    held: set[int] = set()
    record: dict[str, Any] = {}
    for prompt_id, items in by_prompt.items():
        if len(items) < 2:
            continue
        content = contents[items[0]]
        prompt = content.prompt_messages if content.prompt_messages is not None else (content.prompt_text or "")
        completion_ids = sorted({c for item in items for c in pairs[item][1:]})
        usable_at, base, members = rewards_of(prompt, [texts[c][0] for c in completion_ids])
        if base is None:
            continue
        usable = [completion_ids[i] for i in usable_at]
        open_pairs = {tuple(sorted(pairs[item][1:])): item for item in items
                      if all(c in usable for c in pairs[item][1:])}
        if len(open_pairs) < 2:
            continue
        choice = choose_pair(rule, usable, sorted(open_pairs), members, base, seed_parts=(dataset_id, prompt_id))
        chosen = open_pairs[choice.pair]
        held.update(item for item in items if item != chosen)
        record[str(chosen)] = {"prompt_id": prompt_id, "pair": list(choice.pair), "rule": rule, "params": choice.params,
                               "mean": {str(c): v for c, v in choice.mean.items()},
                               "std": {str(c): v for c, v in choice.std.items()},
                               "held_back": sorted(item for item in items if item != chosen)}
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "acquisition.json").write_text(json.dumps({"rule": rule, "chosen": record}, indent=1))
    log(f"acquisition {rule}: one pair chosen on each of {len(record)} prompt(s), {len(held)} pair(s) held back")
    return ([QueueKey(k.comparison_id, k.margin, k.key + 1.0 if k.comparison_id in held else k.key, k.arm)
             for k in keys], f"; {rule} chose one pair on each of {len(record)} prompt(s), {len(held)} held back")
