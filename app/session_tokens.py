"""Gradio's login tokens, kept in the store through ``core.sessions`` instead of a dict in memory.

Gradio reads ``app.tokens`` as a mapping of token to user name: ``app.tokens[token] = name`` after a
correct password, ``app.tokens.get(token)`` on every request. ``StoredTokens`` is that mapping over the
store. Tokens are stored hashed, so they cannot be listed: logging out goes through the guard
(``app/http_guard.py``), which ends the user's sessions in the store. ``cookie_id_for`` names the
cookie by the store (Gradio draws a random name per start, which alone logs everyone out on a restart).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, MutableMapping

from core.sessions import end_session, session_user, start_session
from storage.engine import Store


def cookie_id_for(store: Store) -> str:
    """A cookie name suffix stable for this store (two apps on one store share their sessions, as they
    share everything else; apps on other stores get other cookies)."""
    return hashlib.sha256(f"rewardlab-sessions:{store.url}".encode()).hexdigest()[:32]


class StoredTokens(MutableMapping):
    def __init__(self, store: Store) -> None:
        self.store = store

    def __getitem__(self, token: str) -> str:
        name = session_user(self.store, token)
        if name is None:
            raise KeyError(token)
        return name

    def __setitem__(self, token: str, name: str) -> None:
        start_session(self.store, name, token)

    def __delitem__(self, token: str) -> None:
        end_session(self.store, token)

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and session_user(self.store, token) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(())  # only hashes are stored: no token can be listed

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return True  # the guard reads "no tokens" as "logins are off"
