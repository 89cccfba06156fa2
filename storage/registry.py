"""Registered reward models: what the Inspect tab and the scorer can load by name.

A name is never reused: training again under a name registers the next version, ``name@v2``,
``name@v3``..., and earlier versions stay registered and loadable. A reference to a model
(``find_model``) is a stored name with a version (``name@vN``; ``name@v1`` is the first, stored as
plain ``name``) or a plain ``name``, which means that name's newest version.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from sqlalchemy import select
from sqlmodel import Session

from storage.models import RegisteredModel

VERSION_SEPARATOR = "@v"
_VERSIONED = re.compile(r"(?P<base>.+)@v(?P<version>[1-9][0-9]*)")


class RegistryError(ValueError):
    pass


def next_version_name(session: Session, base_name: str) -> str:
    """``base_name`` while it is free, else ``base_name@vN`` for the next N (the first is v1)."""
    taken = session.execute(select(RegisteredModel.name).where(
        (RegisteredModel.name == base_name) | RegisteredModel.name.startswith(base_name + VERSION_SEPARATOR, autoescape=True)
    )).scalars().all()
    if not taken:
        return base_name
    versions = [1 if name == base_name else int(suffix) for name in taken
                if name == base_name or (suffix := name[len(base_name) + len(VERSION_SEPARATOR):]).isdigit()]
    return f"{base_name}{VERSION_SEPARATOR}{max(versions, default=1) + 1}"


def register_model(session: Session, *, name: str, path: str, base_model: str | None = None, job_id: int | None = None,
                   config: dict[str, Any] | None = None, data_hash: str | None = None, n_pairs: int | None = None,
                   eval_accuracy: float | None = None, eval_margin: float | None = None) -> int:
    """Add a model and return its id. Raises ``RegistryError`` when the name is taken: a registered
    model is never replaced (``next_version_name`` gives the name for a new version)."""
    if model_by_name(session, name) is not None:
        raise RegistryError(f"a reward model named {name!r} is already registered; models are never replaced")
    record = RegisteredModel(name=name, path=path)
    record.base_model, record.job_id, record.config = base_model, job_id, config or {}
    record.data_hash, record.n_pairs, record.eval_accuracy, record.eval_margin = data_hash, n_pairs, eval_accuracy, eval_margin
    session.add(record)
    session.flush()
    return record.id


def list_models(session: Session) -> list[RegisteredModel]:
    return list(session.execute(select(RegisteredModel).order_by(RegisteredModel.created_at.desc(), RegisteredModel.id.desc())).scalars())


def model_by_name(session: Session, name: str) -> RegisteredModel | None:
    return session.execute(select(RegisteredModel).where(RegisteredModel.name == name)).scalar_one_or_none()


def _versions_of(session: Session, base_name: str) -> dict[int, RegisteredModel]:
    records = session.execute(select(RegisteredModel).where(
        (RegisteredModel.name == base_name) | RegisteredModel.name.startswith(base_name + VERSION_SEPARATOR, autoescape=True)
    )).scalars()
    versions = {}
    for record in records:
        if record.name == base_name:
            versions[1] = record
        elif (match := _VERSIONED.fullmatch(record.name)) and match["base"] == base_name:
            versions[int(match["version"])] = record
    return versions


def find_model(session: Session, reference: str) -> RegisteredModel | None:
    """The model ``reference`` names: ``name@vN`` that version (``name@v1``: the one stored as ``name``),
    a plain ``name`` its newest version; None when nothing registered matches."""
    versioned = _VERSIONED.fullmatch(reference)
    if versioned:
        return _versions_of(session, versioned["base"]).get(int(versioned["version"])) or model_by_name(session, reference)
    versions = _versions_of(session, reference)
    return versions[max(versions)] if versions else None


def version_references(names: Iterable[str]) -> dict[str, str]:
    """For each stored name, the reference that names that model alone: the stored name, except a first
    version with later ones (``name``, which ``find_model`` reads as the newest), shown as ``name@v1``."""
    names = list(names)
    later = {match["base"] for name in names if (match := _VERSIONED.fullmatch(name))}
    return {name: f"{name}{VERSION_SEPARATOR}1" if name in later else name for name in names}
