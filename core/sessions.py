"""Login sessions, kept in the store: a restart of the app logs nobody out, and a password reset, a role
change or a disable ends every session of that user at its next request (``core.accounts`` ends them in the
same transaction as the change).

The web app hands these functions Gradio's login tokens (``app/session_tokens.py``); the store keeps
only a SHA-256 of each token, so a copy of the store (a backup, a leaked file) logs nobody in.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import select

from core.accounts import Actor, Permission, PermissionDenied, actor_for
from core.limits import MAX_SESSION_AGE_SECONDS
from storage.engine import Store
from storage.models import User
from storage.sessions import add_session, end_sessions_of, live_session_user, open_session_count
from storage.sessions import end_session as end_stored_session


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def start_session(store: Store, name: str, token: str) -> None:
    """Record a session for the active login account ``name`` (its password was just checked). Raises
    ``PermissionDenied`` when there is no such account."""
    with store.write() as session:
        user_id = session.execute(
            select(User.id).where(User.name == name, User.password_hash.is_not(None), User.disabled_at.is_(None))
        ).scalar_one_or_none()
        if user_id is None:
            raise PermissionDenied(f"no active account named {name!r}")
        add_session(session, token_hash=token_hash(token), user_id=user_id,
                    lifetime=timedelta(seconds=MAX_SESSION_AGE_SECONDS))


def session_user(store: Store, token: str | None) -> str | None:
    """The user name of a live session (not ended, not expired, its account active), else None."""
    if not token:
        return None
    with store.read() as session:
        user = live_session_user(session, token_hash(token))
    if user is None or user.disabled_at is not None or user.password_hash is None:
        return None
    return user.name


def end_session(store: Store, token: str) -> None:
    """Log out the session of ``token`` (nothing happens for an unknown one)."""
    with store.write() as session:
        end_stored_session(session, token_hash(token))


def log_out_everywhere(store: Store, token: str | None) -> str | None:
    """End every session of the user whose session ``token`` is (Gradio's /logout does the same); returns
    that user's name, or None for a token that is no session."""
    if not token:
        return None
    with store.write() as session:
        user = live_session_user(session, token_hash(token))
        if user is None:
            return None
        end_sessions_of(session, user.id)
        return user.name


def open_sessions(store: Store, actor: Actor, name: str) -> int:
    """How many live sessions ``name`` has (the user themself, or an admin)."""
    if actor.name != name:
        actor.require(Permission.MANAGE_USERS)
    with store.read() as session:
        user_id = session.execute(select(User.id).where(User.name == name)).scalar_one_or_none()
        return 0 if user_id is None else open_session_count(session, user_id)


def may_fetch_files(store: Store, name: str | None) -> bool:
    """Whether ``name`` may fetch the files the web app serves from its cache: exports (and uploads to
    import), so the roles that may export. Gradio itself serves them to anyone logged in with the URL."""
    if not name:
        return False
    try:
        return actor_for(store, name).can(Permission.EXPORT)
    except PermissionDenied:
        return False
