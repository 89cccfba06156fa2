"""Registered reward models: what the Inspect tab and the scorer can load by name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from storage.models import RegisteredModel


def register_model(session: Session, *, name: str, path: str, base_model: str | None = None, job_id: int | None = None,
                   config: dict[str, Any] | None = None, data_hash: str | None = None, n_pairs: int | None = None,
                   eval_accuracy: float | None = None, eval_margin: float | None = None) -> int:
    """Add a model (or update the one with this name) and return its id."""
    existing = session.execute(select(RegisteredModel).where(RegisteredModel.name == name)).scalar_one_or_none()
    record = existing or RegisteredModel(name=name, path=path)
    record.path, record.base_model, record.job_id, record.config = path, base_model, job_id, config or {}
    record.data_hash, record.n_pairs, record.eval_accuracy, record.eval_margin = data_hash, n_pairs, eval_accuracy, eval_margin
    session.add(record)
    session.flush()
    return record.id


def list_models(session: Session) -> list[RegisteredModel]:
    return list(session.execute(select(RegisteredModel).order_by(RegisteredModel.created_at.desc(), RegisteredModel.id.desc())).scalars())


def model_by_name(session: Session, name: str) -> RegisteredModel | None:
    return session.execute(select(RegisteredModel).where(RegisteredModel.name == name)).scalar_one_or_none()
