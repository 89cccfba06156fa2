"""Permissions by resource and action, at the core level, for every public ``core`` function that takes an actor.

``PERMISSIONS`` classifies each function (resource, action, the permission it needs); the test finds the
functions by walking ``core/`` (the oracle is the code's own signatures), so a new public function that takes
an actor and is not classified here fails. Each classified function is called as a role that lacks the
permission (it must raise ``PermissionDenied`` before touching anything: its inputs are nonsense) and as an
admin (it must not).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from core.accounts import Actor, Permission, PermissionDenied, add_user, actor_for
from core.data.datasets import DatasetSettings
from core.data.importer import ImportConfig
from core.data.records import RecordFilter
from core.loop.settings import LoopSettings
from core.training.config import TrainingConfig

ROOT = Path(__file__).resolve().parent.parent
P = Permission
LABEL_ONLY = None  # any login role may: the actor's own labels, in the datasets open to them

# function -> (resource, action, permission a caller needs; LABEL_ONLY: every login role)
PERMISSIONS: dict[str, tuple[str, str, Permission | None]] = {
    "core.accounts.list_accounts": ("accounts", "list", P.MANAGE_USERS),
    "core.accounts.create_account": ("accounts", "create", P.MANAGE_USERS),
    "core.accounts.change_role": ("accounts", "change role", P.MANAGE_USERS),
    "core.accounts.set_password": ("accounts", "reset password", P.MANAGE_USERS),
    "core.accounts.disable_account": ("accounts", "disable", P.MANAGE_USERS),
    "core.accounts.enable_account": ("accounts", "enable", P.MANAGE_USERS),
    "core.sessions.open_sessions": ("sessions", "count another user's", P.MANAGE_USERS),
    "core.data.datasets.datasets_for": ("datasets", "list with counts", LABEL_ONLY),
    "core.data.datasets.datasets_to_label": ("datasets", "list the open ones", LABEL_ONLY),
    "core.data.datasets.create_dataset": ("datasets", "create", P.IMPORT),
    "core.data.datasets.change_dataset_settings": ("datasets", "change settings", P.CHANGE_SETTINGS),
    "core.data.exporter.export_for_download": ("labels", "export", P.EXPORT),
    "core.data.importer.import_upload": ("comparisons", "import", P.IMPORT),
    "core.data.importer.question_for_upload": ("uploads", "read to suggest a question", P.IMPORT),
    "core.data.records.browse": ("records", "browse", P.VIEW_TEAM),
    "core.data.records.record_detail": ("records", "read with every label", P.VIEW_TEAM),
    "core.data.records.send_back": ("records", "send back to the queue", P.REQUEUE),
    "core.data.records.change_priority": ("records", "set priority", P.REQUEUE),
    "core.data.records.archive_records": ("records", "archive", P.REQUEUE),
    "core.data.store_move.back_up_store": ("store", "back up", P.MANAGE_USERS),
    "core.data.summary.store_summary": ("store", "summarize", P.EXPORT),
    "core.jobs.scheduling.submit_job": ("jobs", "submit", P.TRAIN),
    "core.jobs.scheduling.cancel_job": ("jobs", "cancel", P.TRAIN),
    "core.jobs.scheduling.resume_job": ("jobs", "resume", P.TRAIN),
    "core.jobs.scheduling.recover_orphaned_jobs": ("jobs", "mark orphans interrupted", P.TRAIN),
    "core.jobs.scheduling.job_report": ("jobs", "read", P.TRAIN),
    "core.jobs.scheduling.recent_jobs": ("jobs", "list", P.TRAIN),
    "core.jobs.scheduling.preview_training": ("jobs", "preview", P.TRAIN),
    "core.labeling.actions.next_comparison": ("queue", "claim the next item", LABEL_ONLY),
    "core.labeling.actions.open_for_change": ("labels", "reopen one's own", LABEL_ONLY),
    "core.labeling.actions.label_on_screen": ("labels", "give", LABEL_ONLY),
    "core.labeling.actions.label_stored": ("labels", "give by id", LABEL_ONLY),
    "core.labeling.actions.rank_item": ("rankings", "give", LABEL_ONLY),
    "core.labeling.actions.rank_and_next": ("rankings", "give and claim the next", LABEL_ONLY),
    "core.labeling.actions.label_steps": ("step marks", "give", LABEL_ONLY),
    "core.labeling.actions.mark_steps_and_next": ("step marks", "give and claim the next", LABEL_ONLY),
    "core.labeling.actions.open_labeling_screen": ("queue", "open the screen", LABEL_ONLY),
    "core.labeling.actions.label_and_next": ("labels", "give and claim the next", LABEL_ONLY),
    "core.labeling.actions.undo_last_screen": ("labels", "undo one's last", LABEL_ONLY),
    "core.labeling.actions.change_label_screen": ("labels", "change one's own", LABEL_ONLY),
    "core.labeling.actions.undo_last": ("labels", "undo one's last", LABEL_ONLY),
    "core.labeling.actions.history": ("labels", "list one's own", LABEL_ONLY),
    "core.labeling.actions.progress": ("labels", "count one's own", LABEL_ONLY),
    "core.labeling.actions.update_guidelines": ("guidelines", "edit", P.EDIT_GUIDELINES),
    "core.labeling.actions.change_overlap": ("datasets", "change overlap", P.CHANGE_SETTINGS),
    "core.labeling.ranking.ranking_view_in": ("rankings", "show an item", LABEL_ONLY),
    "core.labeling.ranking.ranking_label_input": ("rankings", "check a ranking", LABEL_ONLY),
    "core.labeling.steps.steps_view_in": ("step marks", "show a trace", LABEL_ONLY),
    "core.labeling.steps.steps_label_input": ("step marks", "check marks", LABEL_ONLY),
    "core.labeling.team_stats.team_report": ("team", "agreement and bias", P.VIEW_TEAM),
    "core.labeling.competence.annotator_competence": ("team", "fit an annotator model", P.VIEW_TEAM),
    "core.labeling.competence.last_competence_fit": ("team", "read the kept annotator model", P.VIEW_TEAM),
    "core.labeling.competence.set_competence_refit": ("settings", "background refit of annotator models",
                                                      P.CHANGE_SETTINGS),
    "core.loop.evaluation.loop_report": ("loop", "read", P.VIEW_TEAM),
    "core.loop.settings.configure_loop": ("loop", "configure", P.CHANGE_SETTINGS),
    "core.scoring.diagnostics.run_diagnostics": ("models", "diagnose on stored labels", P.INSPECT),
    "core.scoring.diagnostics.send_for_review": ("records", "send back for review", P.REQUEUE),
    "core.scoring.inspection.comparison_for_inspection": ("comparisons", "load into Inspect", P.INSPECT),
    "core.scoring.inspection.registered_models": ("models", "list", P.INSPECT),
    "core.scoring.inspection.model_choices": ("models", "list names", P.INSPECT),
    "core.scoring.inspection.require_inspect": ("models", "inspect", P.INSPECT),
    "core.scoring.inspection.may_inspect": ("models", "ask whether one may inspect", LABEL_ONLY),
    "core.scoring.inspection.allow_annotators_to_inspect": ("settings", "change", P.CHANGE_SETTINGS),
    "core.scoring.inspection.resolve_model": ("models", "load", P.INSPECT),
    "core.scoring.inspection.inspect_with_models": ("models", "score pasted text", P.INSPECT),
}

NONSENSE = {  # inputs that would fail if used: the permission check must come first
    "name": "someone-else", "role": "annotator", "password": "x" * 12, "dataset": "no-such-dataset", "datasets": None,
    "comparison_id": 10**9, "comparison_ids": [10**9], "job_id": 10**9, "item_id": 10**9, "groups": [[1]],
    "path": Path("/nonexistent/upload.jsonl"), "priority": 1, "archived": True, "page": 1, "page_size": 10, "record_filter": RecordFilter(),
    "settings": DatasetSettings(), "config": TrainingConfig(), "target": Path("/nonexistent/backup.db"),
    "markdown": "guidelines", "labels_needed": 2, "limit": 5, "first_name": "no-model", "second_name": None,
    "model_names": ["no-model"], "prompt": "p", "responses": ["a", "b"], "allowed": True, "stored_data": True,
    "format": "jsonl", "prompt_format": "auto", "test_size": 0.0, "with_metadata": False, "ranking_pairs": "all",
    "ranking_margin": False, "question": None, "view": None, "screen_choice": "left", "choice": "a", "every": 0,
}


def actor_functions() -> dict[str, object]:
    found = {}
    for path in sorted((ROOT / "core").rglob("*.py")):
        module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(module_name)
        for name, function in vars(module).items():
            if (not name.startswith("_") and inspect.isfunction(function) and function.__module__ == module_name
                    and "actor" in inspect.signature(function).parameters):
                found[f"{module_name}.{name}"] = function
    return found


def test_every_public_core_function_that_takes_an_actor_is_classified_by_resource_and_action():
    found = set(actor_functions())
    assert found - set(PERMISSIONS) == set(), "classify these in PERMISSIONS (resource, action, permission)"
    assert set(PERMISSIONS) - found == set(), "PERMISSIONS names functions that no longer exist"


def _call(function, store, actor: Actor):  # noqa: ANN001, ANN202
    arguments = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "actor":
            arguments[name] = actor
        elif name in ("store", "session"):
            arguments[name] = store if name == "store" else None
        elif name == "settings":
            arguments[name] = LoopSettings() if "loop" in function.__module__ else DatasetSettings()
        elif name == "config" and "importer" in function.__module__:
            arguments[name] = ImportConfig(Path("/nonexistent/upload.jsonl"))
        elif name in NONSENSE:
            arguments[name] = NONSENSE[name]
        elif parameter.default is not inspect.Parameter.empty:
            continue
        else:
            raise AssertionError(f"{function.__qualname__}: no nonsense value for parameter {name!r}")
    if "session" in arguments:
        with store.write() as session:
            arguments["session"] = session
            return function(**arguments)
    return function(**arguments)


@pytest.mark.parametrize("qualified", sorted(PERMISSIONS))
def test_a_role_without_the_permission_is_refused_first_and_an_admin_is_not(store, qualified):
    _, _, needed = PERMISSIONS[qualified]
    module_name, name = qualified.rsplit(".", 1)
    function = getattr(importlib.import_module(module_name), name)
    add_user(store, "ann", "annotator", "correct horse battery")
    add_user(store, "boss", "admin", "correct horse battery")
    annotator, admin = actor_for(store, "ann"), actor_for(store, "boss")
    if needed is not None:
        assert not annotator.can(needed)
        with pytest.raises(PermissionDenied):
            result = _call(function, store, annotator)
            if qualified == "core.scoring.inspection.may_inspect":  # answers instead of raising
                assert result is False
                raise PermissionDenied("may_inspect said no")
    for allowed in ([admin] if needed is not None else [admin, annotator]):
        try:
            _call(function, store, allowed)
        except PermissionDenied as error:
            pytest.fail(f"{allowed.role} {allowed.name} was refused {qualified}: {error}")
        except Exception:  # noqa: BLE001 (nonsense inputs fail after the check; the check is what is tested)
            pass
