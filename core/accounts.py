"""Accounts, roles and what each role may do.

Passwords are hashed with Argon2id (``argon2-cffi``, the winner of the Password Hashing
Competition and OWASP's first recommendation). With no account in the store the app runs as one
local admin and may listen on the loopback address only; as soon as one account exists, every
page and API call needs a login, and the user is known from the session, never from a text box.
"""

from __future__ import annotations

import enum
import functools
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update

from core.limits import MAX_PASSWORD_CHARS, MIN_PASSWORD_LENGTH
from storage.engine import Store
from storage.labels import ensure_user
from storage.models import Label, Role, User, utc_now
from storage.sessions import end_sessions_of

LOCAL_USER = "local"
LOGIN_ROLES = (Role.ANNOTATOR, Role.ENGINEER, Role.ADMIN)
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_hasher = PasswordHasher()


class AccountError(ValueError):
    """An account that cannot be created; the message says how to fix it."""


class PermissionDenied(PermissionError):
    """The user's role does not allow this action."""


class AccountDisabled(PermissionDenied):
    """The account exists but an admin disabled its login."""


class Permission(enum.Enum):
    LABEL = "label comparisons"
    IMPORT = "import data"
    EXPORT = "export data"
    TRAIN = "start or cancel training"
    VIEW_TEAM = "see the team's labeling statistics"
    EDIT_GUIDELINES = "edit the labeling guidelines"
    CHANGE_SETTINGS = "change labeling settings"
    REQUEUE = "send comparisons back to the labeling queue"
    INSPECT = "inspect reward models and the comparisons they score"
    MANAGE_USERS = "manage user accounts"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Role.ANNOTATOR.value: frozenset({Permission.LABEL}),
    Role.ENGINEER.value: frozenset(
        {Permission.LABEL, Permission.IMPORT, Permission.EXPORT, Permission.TRAIN, Permission.VIEW_TEAM,
         Permission.REQUEUE, Permission.INSPECT}
    ),
    Role.ADMIN.value: frozenset(Permission),
}


@dataclass(frozen=True)
class Actor:
    """Who is acting: a stored user with a login role."""

    user_id: int
    name: str
    role: str

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise PermissionDenied(f"{self.name} is {self.role_article} {self.role} and may not {permission.value}")

    @property
    def role_article(self) -> str:
        return "an" if self.role[0] in "aeiou" else "a"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def add_user(store: Store, name: str, role: str, password: str) -> None:
    """Create a login account. Raises ``AccountError`` for a bad name, role, weak password or a
    name that is taken."""
    if not _NAME_PATTERN.fullmatch(name or ""):
        raise AccountError(
            "a user name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
        )
    if role not in {r.value for r in LOGIN_ROLES}:
        raise AccountError(f"role must be one of {', '.join(r.value for r in LOGIN_ROLES)}, got {role!r}")
    _check_password(password)
    with store.write() as session:
        twin = session.execute(select(User.name).where(func.lower(User.name) == name.lower())).scalars().first()
        if twin is not None:
            raise AccountError(f"user {name!r} already exists" if twin == name else
                               f"user {twin!r} exists; names differing only in case are one name: choose another")
        session.add(User(name=name, role=role, password_hash=hash_password(password)))


def _check_password(password: str | None) -> None:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"the password is longer than {MAX_PASSWORD_CHARS:,} characters")


def accounts_exist(store: Store) -> bool:
    with store.read() as session:
        return session.execute(select(func.count()).where(User.password_hash.is_not(None))).scalar_one() > 0


def authenticate(store: Store, name: str, password: str) -> bool:
    """Whether ``name``/``password`` is a login account that is not disabled (Gradio's ``auth`` callable)."""
    with store.read() as session:
        stored = session.execute(
            select(User.password_hash).where(User.name == name, User.password_hash.is_not(None),
                                             User.disabled_at.is_(None))
        ).scalar_one_or_none()
    if stored is None:
        # Spend the same time as a real check, so timing does not tell which names exist.
        stored = unknown_name_hash()
        name = ""
    try:
        return _hasher.verify(stored, password) and bool(name)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def unknown_name_hash() -> str:
    """The hash a login with an unknown name is checked against. Made on first use rather than at import
    (~0.2 CPU-s that every command, job worker and app paid, logins or not); the web app makes it as it
    starts (``login_check``), so even the first unknown name costs what a real check costs."""
    return _hasher.hash("rewardlab-no-such-user")


def actor_for(store: Store, username: str | None) -> Actor:
    """The actor behind a request: the logged-in account, or the single local user when the store
    has no accounts (then the app listens on 127.0.0.1 only). Raises ``PermissionDenied``, and
    ``AccountDisabled`` for an account disabled since it logged in: its session stops at this request."""
    if username is None:
        if accounts_exist(store):
            raise PermissionDenied(
                "log in first (user accounts were added after the app started: restart it so that it asks for logins)"
            )
        return operator_actor(store)
    with store.read() as session:
        user = session.execute(
            select(User).where(User.name == username, User.password_hash.is_not(None))
        ).scalar_one_or_none()
    if user is None:
        raise PermissionDenied(f"no account named {username!r}")
    if user.disabled_at is not None:
        raise AccountDisabled(f"the account {username!r} is disabled: ask an admin to re-enable it")
    return Actor(user.id, user.name, user.role)


def operator_actor(store: Store) -> Actor:
    """The person at this machine's shell (the command line): the local admin. Whoever can run
    ``python app.py`` here can open the store's file or URL directly, so the command line acts with
    every permission, and still goes through the same ``core`` functions (and their checks) as the app."""
    with store.write() as session:
        user_id = ensure_user(session, LOCAL_USER, role=Role.ADMIN)
    return Actor(user_id, LOCAL_USER, Role.ADMIN.value)


# ----- Managing accounts (admins, from the Team tab; the command line as the operator)
# Each function checks MANAGE_USERS itself and does its reads and its write in one transaction, so
# "is this the last active admin?" is answered under the same write lock as the change it guards.


@dataclass(frozen=True)
class AccountSummary:
    """One login account as an admin sees it."""

    name: str
    role: str
    created_at: datetime
    disabled_at: datetime | None
    labels: int

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


def list_accounts(store: Store, actor: Actor) -> list[AccountSummary]:
    """Every login account (not import sources, not the local operator), by name, with its label count.
    Raises ``PermissionDenied``."""
    actor.require(Permission.MANAGE_USERS)
    labels = (select(Label.annotator_id, func.count().label("labels")).group_by(Label.annotator_id)).subquery()
    with store.read() as session:
        rows = session.execute(
            select(User.name, User.role, User.created_at, User.disabled_at, func.coalesce(labels.c.labels, 0))
            .outerjoin(labels, labels.c.annotator_id == User.id)
            .where(User.password_hash.is_not(None))
            .order_by(User.name)
        ).all()
    return [AccountSummary(*row) for row in rows]


def create_account(store: Store, actor: Actor, name: str, role: str, password: str) -> None:
    """``add_user`` for an admin. Raises ``PermissionDenied`` or ``AccountError``."""
    actor.require(Permission.MANAGE_USERS)
    add_user(store, name, role, password)


def _login_account(session, name: str) -> User:  # noqa: ANN001
    user = session.execute(
        select(User).where(User.name == name, User.password_hash.is_not(None))
    ).scalar_one_or_none()
    if user is None:
        raise AccountError(f"no login account named {name!r}")
    return user


def _refuse_removing_the_last_admin(session, user: User, what: str) -> None:  # noqa: ANN001
    if user.role != Role.ADMIN.value or user.disabled_at is not None:
        return
    # FOR UPDATE: on PostgreSQL two admins disabling each other at once are serialized on these rows
    # (SQLite's write transactions are serialized already by BEGIN IMMEDIATE).
    active_admins = session.execute(
        select(User.id).where(User.role == Role.ADMIN.value, User.password_hash.is_not(None),
                              User.disabled_at.is_(None)).with_for_update()
    ).all()
    if len(active_admins) <= 1:
        raise AccountError(
            f"refused to {what}: {user.name!r} is the last active admin, and nobody could manage accounts "
            "afterwards. Make another account an admin first."
        )


def _refuse_self(actor: Actor, name: str, what: str) -> None:
    if actor.name == name:
        raise AccountError(f"refused to {what}: you cannot do that to your own account; ask another admin")


def change_role(store: Store, actor: Actor, name: str, role: str) -> None:
    """Give ``name`` another login role. Refuses one's own account and the last active admin.
    Raises ``PermissionDenied`` or ``AccountError``."""
    actor.require(Permission.MANAGE_USERS)
    if role not in {r.value for r in LOGIN_ROLES}:
        raise AccountError(f"role must be one of {', '.join(r.value for r in LOGIN_ROLES)}, got {role!r}")
    _refuse_self(actor, name, f"change the role of {name!r}")
    with store.write() as session:
        user = _login_account(session, name)
        if role != Role.ADMIN.value:
            _refuse_removing_the_last_admin(session, user, f"make {name!r} {'an' if role[0] in 'aeiou' else 'a'} {role}")
        session.execute(update(User).where(User.id == user.id).values(role=role))
        end_sessions_of(session, user.id)  # a session keeps what it was granted: the next request logs in anew


def set_password(store: Store, actor: Actor, name: str, password: str) -> None:
    """Replace the password of ``name`` (same rules as ``add_user``). Raises ``PermissionDenied`` or
    ``AccountError``."""
    actor.require(Permission.MANAGE_USERS)
    _check_password(password)
    password_hash = hash_password(password)  # ~100 ms of CPU: not while holding the write lock
    with store.write() as session:
        user = _login_account(session, name)
        session.execute(update(User).where(User.id == user.id).values(password_hash=password_hash))
        end_sessions_of(session, user.id)  # whoever knew the old password is logged out at their next request


def disable_account(store: Store, actor: Actor, name: str) -> bool:
    """Stop ``name`` from logging in; its labels stay, and its open sessions are refused at their next
    request (``actor_for``). Returns False when it was disabled already. Refuses one's own account and
    the last active admin. Raises ``PermissionDenied`` or ``AccountError``."""
    actor.require(Permission.MANAGE_USERS)
    _refuse_self(actor, name, f"disable {name!r}")
    with store.write() as session:
        user = _login_account(session, name)
        if user.disabled_at is not None:
            return False
        _refuse_removing_the_last_admin(session, user, f"disable {name!r}")
        session.execute(update(User).where(User.id == user.id).values(disabled_at=utc_now()))
        end_sessions_of(session, user.id)
    return True


def enable_account(store: Store, actor: Actor, name: str) -> bool:
    """Let ``name`` log in again. Returns False when it was not disabled. Raises ``PermissionDenied`` or
    ``AccountError``."""
    actor.require(Permission.MANAGE_USERS)
    with store.write() as session:
        user = _login_account(session, name)
        if user.disabled_at is None:
            return False
        session.execute(update(User).where(User.id == user.id).values(disabled_at=None))
    return True


class LoginThrottle:
    """Failed logins slow down the one who fails, not everyone: per client address and per user name.

    After ``free`` failures within ``window`` seconds, each further attempt must wait twice as long
    as the one before, up to a cap: long for an address (one guesser), short for a user name (so a
    guesser elsewhere cannot lock the real user out for more than ``user_max_wait`` seconds). A
    success takes back only its own attempt (see ``succeeded``). A throttled attempt is refused
    before any password hash is computed.
    Bounded: the oldest keys are forgotten past ``max_keys``.
    """

    def __init__(self, *, address_free: int = 5, address_max_wait: float = 300.0, user_free: int = 10,
                 user_max_wait: float = 30.0, window: float = 900.0, max_keys: int = 100_000,
                 clock=time.monotonic) -> None:  # noqa: ANN001
        self._rules = {"address": (address_free, address_max_wait), "user": (user_free, user_max_wait)}
        self._window, self._max_keys, self._clock = window, max_keys, clock
        self._failures: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < self._window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def begin_attempt(self, address: str, user: str) -> float:
        """Check an attempt and, when it may go ahead (0 returned), count it as failed until
        ``succeeded`` says otherwise: attempts in flight at once cannot all pass as the first.
        Otherwise return how many seconds it must wait."""
        with self._lock:
            wait = self._wait(address, user)
            if wait == 0:
                self._record_failure(address, user)
            return wait

    def wait_seconds(self, address: str, user: str) -> float:
        """How long an attempt must wait now (0 when it may go ahead)."""
        with self._lock:
            return self._wait(address, user)

    def _wait(self, address: str, user: str) -> float:
        now = self._clock()
        waits = []
        for kind, value in (("address", address), ("user", user.strip().lower())):
            free, cap = self._rules[kind]
            times = self._recent((kind, value), now)
            if len(times) >= free:
                waits.append(times[-1] + min(cap, 2.0 ** (len(times) - free)) - now)
        return max([0.0, *waits])

    def failed(self, address: str, user: str) -> None:
        with self._lock:
            self._record_failure(address, user)

    def _record_failure(self, address: str, user: str) -> None:
        now = self._clock()
        for key in (("address", address), ("user", user.strip().lower())):
            self._failures[key] = [*self._recent(key, now), now]
            self._failures.move_to_end(key)
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, address: str, user: str) -> None:
        """A correct password: the attempt just counted as failed is taken back, for the address and
        the name. Earlier failures stay: logging into one's own account must not reset the count of
        guesses made from that address against others."""
        with self._lock:
            for key in (("address", address), ("user", user.strip().lower())):
                times = self._failures.get(key)
                if times:
                    times.pop()
                if not times:
                    self._failures.pop(key, None)
