"""Dynamic batching for the reward server: concurrent requests scored as one length-bucketed batch.

Why: an RL trainer sends a group of completions per request (8 in a GRPO step), and several rollout
workers send at once. Scored one request at a time, each forward pass holds 8 rows; gathered, the
engine's length buckets (``RewardScorer.score_ids``) get many rows of similar length, which is what
recovers the cost of HTTP (see ``bench/serve_load.py``).

How: request handlers format their completions and ``submit`` a ``ScoringWork`` (the token
sequences per model) to a bounded queue; one worker thread owns the models. It takes the first
waiting work, waits up to ``wait_seconds`` for more to join until ``max_batch_sequences`` is
reached (a request is never split; one that does not fit waits for the next batch), scores every
sequence of the batch through each model in one call, and resolves each request's future with its
own rewards. A full queue refuses at once (``ServerBusy``, a 503 for the client to retry) instead
of holding ever more request bodies in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

from core.scoring.engine import FormattedExample, RewardScorer

log = logging.getLogger(__name__)
_STOP = object()

Trajectory = tuple[list[tuple[str, float]], int | None]


class ServerBusy(RuntimeError):
    """The queue of waiting requests is full; the client should retry shortly."""


@dataclass
class ScoringWork:
    """One request's work: per model, the token sequences to score; and, for a one-model server, the
    examples whose per-token trajectories were asked for."""

    sequences: list[list[list[int]]]
    trajectories: list[FormattedExample] = field(default_factory=list)
    # per-step rewards (one-model server): each trace's token ids and the positions its steps are read at
    step_reads: list[tuple[list[int], list[int]]] = field(default_factory=list)
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return (max((len(per_model) for per_model in self.sequences), default=0) + len(self.trajectories)
                + len(self.step_reads))


@dataclass(frozen=True)
class ScoredWork:
    rewards: list[list[float]]  # per model, one per submitted sequence, in order
    trajectories: list[Trajectory]  # one per submitted trajectory example
    # per model: each sequence's reward-token features (from the same pass) for models asked for them, else None
    features: list[list | None] = field(default_factory=list)
    step_rewards: list[list[float]] = field(default_factory=list)  # one list per submitted step read


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    sequences: int = 0
    largest_batch: int = 0


class DynamicBatcher:
    """One worker thread scoring the queued work of many requests in shared batches."""

    def __init__(self, scorers: Sequence[RewardScorer], *, wait_seconds: float, max_batch_sequences: int,
                 max_queue: int, with_features: Sequence[int] = ()) -> None:
        """``with_features``: the indices of the scorers whose reward-token features every result carries
        (a model served with ensemble heads)."""
        self.scorers = list(scorers)
        self.with_features = frozenset(with_features)
        self.wait_seconds, self.max_batch_sequences = wait_seconds, max_batch_sequences
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._work, name="reward-batcher", daemon=True)
        self.stats = BatchStats()

    def start(self) -> "DynamicBatcher":
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, refuse what waits, and stop the worker."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item.future.set_exception(ServerBusy("the server is shutting down"))
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def submit(self, work: ScoringWork) -> Future:
        """Queue ``work``; its future resolves to a ``ScoredWork``. Raises ``ServerBusy`` when full."""
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            raise ServerBusy(f"the server is busy: {self._queue.maxsize} requests are waiting (max_queue); "
                             "retry shortly") from None
        return work.future

    def _work(self) -> None:
        carried = None
        while True:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is _STOP:
                return
            batch, size = [first], first.size
            deadline = time.monotonic() + self.wait_seconds
            while size < self.max_batch_sequences:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP or size + item.size > self.max_batch_sequences:
                    carried = item  # scored (or obeyed) right after this batch
                    break
                batch.append(item)
                size += item.size
            self._score([work for work in batch if work.future.set_running_or_notify_cancel()])

    def _score(self, batch: list[ScoringWork]) -> None:
        if not batch:
            return
        try:
            per_work: list[list[list[float]]] = [[] for _ in batch]
            per_work_features: list[list[list | None]] = [[] for _ in batch]
            for m, scorer in enumerate(self.scorers):
                flat = [sequence for work in batch for sequence in work.sequences[m]]
                read: list | None = [] if m in self.with_features else None
                if not flat:
                    rewards = iter([])
                else:
                    rewards = iter(scorer.score_ids(flat) if read is None else scorer.score_ids(flat, features_out=read))
                features = iter(read or [])
                for k, work in enumerate(batch):
                    per_work[k].append([next(rewards) for _ in work.sequences[m]])
                    per_work_features[k].append([next(features) for _ in work.sequences[m]] if read is not None else None)
            trajectories = [self.scorers[0].trajectories(work.trajectories) if work.trajectories else []
                            for work in batch]
            # one causal forward per trace, the score head read at each step's position
            step_rewards = [[self.scorers[0].scores_at(ids, positions) for ids, positions in work.step_reads]
                            for work in batch]
        except Exception as error:  # noqa: BLE001 (every waiting request must hear of it; the log has the trace)
            log.exception("scoring a batch of %d requests failed", len(batch))
            for work in batch:
                work.future.set_exception(error)
            return
        stats = self.stats
        stats.batches += 1
        stats.requests += len(batch)
        sequences = sum(len(work.sequences[0]) for work in batch if work.sequences)
        stats.sequences += sequences
        stats.largest_batch = max(stats.largest_batch, sequences)
        for work, rewards, steps, features, step_scores in zip(batch, per_work, trajectories, per_work_features,
                                                               step_rewards, strict=True):
            work.future.set_result(ScoredWork(rewards, steps, features=features, step_rewards=step_scores))
