"""The background refit of annotator models: after every N new human labels in a dataset (the store setting
``competence_refit_every``, 0 = off), a job of kind ``competence`` fits Dawid-Skene on the dataset's labels and
keeps the result beside the store (``core.preferences.competence.save_fit``), which the Team tab shows.

The fit runs in the job worker's child process like a rescore (a fit of 15,000 labels takes ~1.3 s plus ~3 s of
imports): never in a labeling request, and never in the app's own threads.
"""

from __future__ import annotations

from typing import Callable

from core.preferences.competence import fit_store_competence, load_fit, save_fit
from storage.engine import Store
from storage.loop import human_label_counts, loop_job_active, queue_loop_job
from storage.settings import get_setting

REFIT_KIND = "competence"
REFIT_METHOD = "dawid-skene"


def competence_tick(store: Store) -> list[int]:
    """Queue a refit for each dataset (not archived) with ``competence_refit_every`` or more human labels since its
    last kept fit, unless one is queued or running already (the job scheduler calls this). Returns the jobs queued."""
    with store.read() as session:
        every = get_setting(session, "competence_refit_every")
        counts = human_label_counts(session) if every else {}
    due = []
    for dataset, count in sorted(counts.items()):
        last = load_fit(store, dataset)
        if count - (last["human_labels"] if last else 0) >= every:
            due.append(dataset)
    queued = []
    for dataset in due:
        with store.write() as session:
            if not loop_job_active(session, dataset, REFIT_KIND):
                queued.append(queue_loop_job(session, dataset, REFIT_KIND, {}))
    return queued


def refit_competence(store: Store, dataset: str, *, log: Callable[[str], None] = print) -> str:
    """Fit the dataset's annotator model and keep it (the job of kind ``competence``); returns the job's note."""
    with store.read() as session:
        count = human_label_counts(session).get(dataset, 0)
    fit = fit_store_competence(store, datasets=[dataset], method=REFIT_METHOD)
    save_fit(store, dataset, fit, human_labels=count)
    flagged = [f"{a.name}: {', '.join(a.flags)}" for a in fit.annotators if a.flags]
    note = (f"fitted {REFIT_METHOD} on {fit.labels} label(s) of {dataset} in {fit.seconds:.1f} s; flags: "
            + ("; ".join(flagged) or "none"))
    log(note)
    return note
