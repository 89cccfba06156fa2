"""Login sessions: rows of ``login_session``, found by the hash of their token.

Every function runs inside the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlmodel import Session

from storage.models import LoginSession, User, utc_now


def add_session(session: Session, *, token_hash: str, user_id: int, lifetime: timedelta) -> None:
    now = utc_now()
    # The user's dead sessions go as a new one comes: the table holds live sessions and recent ends only.
    session.execute(delete(LoginSession).where(LoginSession.user_id == user_id, LoginSession.expires_at < now))
    session.add(LoginSession(token_hash=token_hash, user_id=user_id, created_at=now, expires_at=now + lifetime))


def live_session_user(session: Session, token_hash: str, now: datetime | None = None) -> User | None:
    """The user of a session that is neither ended nor expired (disabled users included: the caller says why)."""
    now = now or utc_now()
    return session.execute(
        select(User).join(LoginSession, LoginSession.user_id == User.id)
        .where(LoginSession.token_hash == token_hash, LoginSession.ended_at.is_(None), LoginSession.expires_at > now)
    ).scalar_one_or_none()


def end_session(session: Session, token_hash: str) -> int:
    return session.execute(
        update(LoginSession).where(LoginSession.token_hash == token_hash, LoginSession.ended_at.is_(None))
        .values(ended_at=utc_now())
    ).rowcount


def end_sessions_of(session: Session, user_id: int) -> int:
    """End every open session of a user; returns how many there were."""
    return session.execute(
        update(LoginSession).where(LoginSession.user_id == user_id, LoginSession.ended_at.is_(None))
        .values(ended_at=utc_now())
    ).rowcount


def open_session_count(session: Session, user_id: int) -> int:
    now = utc_now()
    return session.execute(
        select(func.count()).select_from(LoginSession).where(
            LoginSession.user_id == user_id, LoginSession.ended_at.is_(None), LoginSession.expires_at > now)
    ).scalar_one()
