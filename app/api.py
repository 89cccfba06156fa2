"""Named API endpoints for scripts (``gradio_client``): ``next``, ``next_in_dataset``, ``label``
and ``rank``, acting as the logged-in user, with the same rules as the page."""

from __future__ import annotations

import inspect
from typing import Any

import gradio as gr

from app.session import USER_ERRORS, current_actor
from core.labeling.actions import label_stored, label_steps, next_comparison, rank_item
from core.labeling.ranking import RankingView
from core.labeling.steps import StepsView
from storage.engine import Store


def register_api(store: Store) -> None:
    """Declare the endpoints inside the current Blocks."""

    def api_next(request: gr.Request) -> dict[str, Any] | None:
        """Reserve the next comparison for you from any dataset you may label: its id, dataset, the
        prompt (text or chat messages) and the two completions as `a` and `b` in stored order; for an
        item of a ranking dataset, `item_id`, `dataset`, `prompt` and `completions` ([{id, text}], in
        the order shown to you); for a trace of a steps dataset, `item_id`, `dataset`, `prompt` and `steps`
        ([{id, text, in_answer}], in order); null when nothing is left for you."""
        return _next(None, request)

    def api_next_in_dataset(dataset: str, request: gr.Request) -> dict[str, Any] | None:
        """As `next`, from dataset `dataset` only."""
        return _next(dataset or None, request)

    def _next(dataset: str | None, request: gr.Request) -> dict[str, Any] | None:
        try:
            view = next_comparison(store, current_actor(store, request), dataset)
        except USER_ERRORS as error:
            raise gr.Error(str(error)) from None
        if view is None:
            return None
        prompt = view.prompt_messages if view.prompt_messages is not None else view.prompt_text
        if isinstance(view, StepsView):
            return {"item_id": view.item_id, "dataset": view.dataset, "prompt": prompt,
                    "steps": [{"id": step.step_id, "text": step.text, "in_answer": step.in_answer} for step in view.steps]}
        if isinstance(view, RankingView):
            return {"item_id": view.item_id, "dataset": view.dataset, "prompt": prompt,
                    "completions": [{"id": c.completion_id, "text": c.text} for c in view.completions]}
        sides = {view.left.side: view.left, view.right.side: view.right}
        return {
            "comparison_id": view.comparison_id,
            "dataset": view.dataset,
            "prompt": prompt,
            "a": sides["a"].text,
            "b": sides["b"].text,
        }

    def api_label(
        comparison_id: int, choice: str, strength: str = "", comment: str = "", request: gr.Request = None
    ) -> dict[str, Any]:
        """Label a comparison as you: choice a|b|tie|both_bad|skip (a and b in stored order),
        strength slightly|clearly (for a or b), an optional comment. Repeating a label changes nothing."""
        try:
            result = label_stored(
                store, current_actor(store, request), int(comparison_id), choice, strength=strength or None,
                comment=comment or None,
            )
        except USER_ERRORS as error:
            raise gr.Error(str(error)) from None
        return {"label_id": result.label_id, "changed": result.changed}

    def api_rank(item_id: int, groups: list, comment: str = "", all_bad: bool = False,
                 request: gr.Request = None) -> dict[str, Any]:
        """Rank an item of a ranking dataset as you: `groups` is a list of lists of completion ids,
        best first, equal completions in one list; every completion once. `all_bad` flags that none
        is acceptable. Repeating a ranking changes nothing; a new one replaces yours."""
        try:
            # Passed on as given: core refuses an item id that is not a whole number and an all_bad
            # that is not a boolean ("false" would otherwise read as true).
            result = rank_item(store, current_actor(store, request), item_id, groups, comment=comment or None,
                               all_bad=all_bad)
        except USER_ERRORS as error:
            raise gr.Error(str(error)) from None
        return {"label_id": result.label_id, "changed": result.changed}

    def api_label_steps(item_id: int, labels: list, final: str = "", comment: str = "",
                        request: gr.Request = None) -> dict[str, Any]:
        """Mark the steps of a trace of a steps dataset as you: `labels` holds one mark per step, in order: "+"
        (correct), "0" (neutral), "-" (wrong) or null (not reviewed, e.g. after the first wrong step); `final`
        is "correct", "wrong" or "" (not judged). Repeating marks changes nothing; new marks replace yours."""
        try:
            result = label_steps(store, current_actor(store, request), item_id, labels, final=final or None,
                                 comment=comment or None)
        except USER_ERRORS as error:
            raise gr.Error(str(error)) from None
        return {"label_id": result.label_id, "changed": result.changed}

    for function, name in ((api_next, "next"), (api_next_in_dataset, "next_in_dataset"), (api_label, "label"),
                           (api_rank, "rank"), (api_label_steps, "label_steps")):
        gr.api(function, api_name=name)
        API_PARAMETERS[name] = [p for p in inspect.signature(function).parameters.values() if p.name != "request"]


# The parameters of each named endpoint, for the request guard: Gradio's HTTP call API does not fill a
# parameter's default when a script sends fewer values (the call ended in an "error" event with data null).
API_PARAMETERS: dict[str, list[inspect.Parameter]] = {}


def complete_api_arguments(api_name: str, data: list) -> list:
    """``data`` with the defaults of the parameters a script left out. Raises ``ValueError`` naming the
    missing parameter when one without a default is left out, or when too many values are given."""
    parameters = API_PARAMETERS.get(api_name)
    if parameters is None:
        return data
    if len(data) > len(parameters):
        raise ValueError(f"/{api_name} takes {len(parameters)} values ({_signature(parameters)}), got {len(data)}")
    missing = parameters[len(data):]
    required = [p.name for p in missing if p.default is inspect.Parameter.empty]
    if required:
        raise ValueError(f"/{api_name}: give {', '.join(required)} ({_signature(parameters)})")
    return [*data, *(p.default for p in missing)]


def _signature(parameters: list[inspect.Parameter]) -> str:
    return ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in parameters)

