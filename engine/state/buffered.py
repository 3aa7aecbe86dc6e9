"""Writes the state refused (a full disk), kept in memory and retried until they land.

The engine wraps every store it uses in one of these. A write that fails
is kept, in order, and retried before the next write, on a timer while the
event loop runs, and at ``Engine.close``; reads see the kept writes as if
they had landed. The failure is logged as an error, and again every
half-minute while it lasts, so a person sees it on stderr. Nothing here
knows SQL: any store that raises ``OSError`` (``StateWriteError`` is one)
on a refused write gets this behaviour.

Memory stays bounded: at most ``limit`` writes are kept per store; past it
the oldest is given up, and the log says so.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..loggers import package_logger
from .dead_letters import PAGE_SIZE, DeadLetterStore, chunked
from .identity import IdentityStore, Remembered, Slot, merged
from .journal import DeliveryJournal
from .token_store import StoredTokens, TokenStore

log = package_logger(__name__)

RETRY_SECONDS = 5.0
LOUD_EVERY_SECONDS = 30.0
DEFAULT_LIMIT = 10_000


class PendingWrites:
    """One store's refused writes, oldest first."""

    def __init__(
        self,
        what: str,
        apply: Callable[[tuple[Any, ...]], None],
        *,
        limit: int = DEFAULT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.limit = limit
        self.ops: deque[tuple[Any, ...]] = deque()
        self.given_up = 0
        self._apply = apply
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._last_loud: float | None = None

    def __len__(self) -> int:
        return len(self.ops)

    def write(self, op: tuple[Any, ...]) -> bool:
        """Apply ``op`` after every earlier kept one; keep it if the store refuses. True when it landed."""
        if self.ops and not self.flush():
            self._keep(op)
            return False
        try:
            self._apply(op)
            return True
        except OSError as exc:
            self._keep(op)
            self._complain(exc)
            return False

    def refused(self, op: tuple[Any, ...], exc: OSError) -> None:
        """``op`` was written another way (sent with another call) and refused: kept, as :meth:`write` keeps it."""
        self._keep(op)
        self._complain(exc)

    def flush(self) -> bool:
        """Retry the kept writes in order; True when none is left."""
        if not self.ops:
            return True
        written = 0
        while self.ops:
            try:
                self._apply(self.ops[0])
            except OSError as exc:
                self._complain(exc)
                return False
            self.ops.popleft()
            written += 1
        log.warning("state: %s can be written again; %d write(s) kept in memory are now saved", self.what, written)
        self._last_loud = None
        self.cancel()
        return True

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _keep(self, op: tuple[Any, ...]) -> None:
        if len(self.ops) >= self.limit:
            self.ops.popleft()
            self.given_up += 1
            log.error(
                "state: %s: more than %d writes waiting for the disk; the oldest was given up (%d so far)",
                self.what,
                self.limit,
                self.given_up,
            )
        self.ops.append(op)
        self._arm()

    def _complain(self, exc: OSError) -> None:
        now = self._clock()
        if self._last_loud is not None and now - self._last_loud < LOUD_EVERY_SECONDS:
            return
        self._last_loud = now
        reason = exc.strerror or str(exc) or type(exc).__name__
        log.error(
            "state: could not write %s (%s); %d write(s) kept in memory and retried every %gs. "
            "Free space in the state directory: they are lost if this process ends first",
            self.what,
            reason,
            len(self.ops),
            RETRY_SECONDS,
        )

    def _arm(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next write retries
        self._timer = loop.call_later(RETRY_SECONDS, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self.flush():
            self._arm()


class BufferedDeadLetters:
    def __init__(self, inner: DeadLetterStore, *, limit: int = DEFAULT_LIMIT) -> None:
        self.inner = inner
        self.pending = PendingWrites("the dead letters", self._apply, limit=limit)

    def _apply(self, op: tuple[Any, ...]) -> None:
        getattr(self.inner, op[0])(*op[1:])

    def add(self, entry: dict[str, Any]) -> bool:
        """True when the letter is in the store, False when it is kept in memory for now."""
        return self.pending.write(("add", entry))

    def remove(self, letter_id: str) -> None:
        self.pending.write(("remove", letter_id))

    def update(self, entry: dict[str, Any]) -> None:
        self.pending.write(("update", entry))

    def discard(self, preset: str, key: str) -> None:
        """Best effort, never kept for later: a stale letter costs nothing (replay removes it unsent),
        while kept writes are bounded and must be spent on letters, not on their removal."""
        discard = getattr(self.inner, "discard", None)  # a store written before discard existed lacks it
        if discard is None or len(self.pending):
            return
        try:
            discard(preset, key)
        except OSError:
            pass

    def entries(self, preset: str | None = None) -> list[dict[str, Any]]:
        self.pending.flush()
        letters = self.inner.entries(preset)
        for name, arg in self.pending.ops:
            if name == "add" and (preset is None or arg.get("preset") == preset):
                same = next(
                    (
                        i
                        for i, e in enumerate(letters)
                        if arg.get("key") is not None
                        and e.get("key") == arg.get("key")
                        and e.get("preset") == arg.get("preset")
                    ),
                    None,
                )
                if same is None:
                    letters.append(dict(arg))
                else:
                    letters[same] = {**arg, "id": letters[same].get("id")}
            elif name == "remove":
                letters = [e for e in letters if e.get("id") != arg]
            elif name == "update":
                letters = [dict(arg) if e.get("id") == arg.get("id") else e for e in letters]
        return letters

    def pages(self, preset: str | None = None, size: int = PAGE_SIZE) -> Iterator[list[dict[str, Any]]]:
        """The store's pages; only while writes are kept in memory (a full disk) are the letters read whole."""
        inner_pages = getattr(self.inner, "pages", None)  # a store written before pages existed lacks it
        if inner_pages is not None and self.pending.flush():
            yield from inner_pages(preset, size)
        else:
            yield from chunked(self.entries(preset), size)

    def count(self, preset: str | None = None) -> int:
        inner_count = getattr(self.inner, "count", None)
        if inner_count is not None and self.pending.flush():
            return int(inner_count(preset))
        return len(self.entries(preset))


class BufferedTokenStore:
    def __init__(self, inner: TokenStore) -> None:
        self.inner = inner
        # Only the newest tokens matter: a kept save is replaced by the next one.
        self.pending = PendingWrites("the rotated refresh token", self._apply, limit=1)

    def _apply(self, op: tuple[Any, ...]) -> None:
        self.inner.save(op[1], op[2])

    def load(self, configured: str) -> StoredTokens | None:
        self.pending.flush()
        for _, tokens, origin in reversed(self.pending.ops):
            if origin == configured:
                return tokens  # newer than anything on disk, and the only copy
        return self.inner.load(configured)

    def save(self, tokens: StoredTokens, configured: str) -> None:
        self.pending.ops.clear()  # superseded: the kept tokens are already spent upstream
        if not self.pending.write(("save", tokens, configured)):
            log.error(
                "auth: the rotated refresh token could not be saved; it is used from memory and the write "
                "is retried. If this process ends before it is saved, the connection must be re-authorised"
            )

    def check_writable(self) -> bool:
        if not self.pending.flush():
            return False
        check = getattr(self.inner, "check_writable", None)
        return True if check is None else bool(check())

    def try_lock(self) -> bool:
        lock = getattr(self.inner, "try_lock", None)
        return True if lock is None else bool(lock())

    def unlock(self) -> None:
        unlock = getattr(self.inner, "unlock", None)
        if unlock is not None:
            unlock()


class BufferedIdentityStore:
    def __init__(self, inner: IdentityStore, *, limit: int = DEFAULT_LIMIT) -> None:
        self.inner = inner
        self.pending = PendingWrites("the identity memory", self._apply, limit=limit)

    def _apply(self, op: tuple[Any, ...]) -> None:
        getattr(self.inner, op[0])(*op[1:])

    def merge(self, slots: Sequence[Slot], traits: Mapping[str, Any], owner: str | None) -> None:
        self.pending.write(("merge", tuple(slots), dict(traits), owner))

    def forget(self, slots: Sequence[Slot]) -> None:
        self.pending.write(("forget", tuple(slots)))

    def prefetch(self, slots: Sequence[tuple[str, str]]) -> None:
        """Read ahead for a worker's batch (a store that can: Redis, one round trip); writes kept here win."""
        prefetch = getattr(self.inner, "prefetch", None)
        if prefetch is not None:
            prefetch(slots)

    def recall(self, kind: str, ident: str) -> Remembered | None:
        entry = self.inner.recall(kind, ident)
        for op in self.pending.ops:  # empty unless the disk is full
            for slot in op[1]:
                if (slot.kind, slot.ident) == (kind, ident):
                    entry = merged(entry, op[2], op[3], slot.exclusive) if op[0] == "merge" else None
        return entry


class BufferedJournal:
    def __init__(
        self, inner: DeliveryJournal, *, limit: int = DEFAULT_LIMIT, clock: Callable[[], float] = time.time
    ) -> None:
        self.inner = inner
        self._clock = clock
        self.pending = PendingWrites("the delivery journal", self._apply, limit=limit)
        # Deliveries that ended in this turn of the event loop, recorded together in the next (record_soon).
        self._group: list[tuple[str, float, asyncio.Future[None]]] = []

    def _apply(self, op: tuple[Any, ...]) -> None:
        self.inner.record(op[1], op[2])

    def delivered_at(self, key: str) -> float | None:
        for _, kept, at in self.pending.ops:
            if kept == key:
                return at
        return self.inner.delivered_at(key)

    def record(self, key: str, at: float | None = None) -> None:
        self.pending.write(("record", key, self._clock() if at is None else at))

    async def record_soon(self, key: str) -> None:
        """:meth:`record`, in one transaction with every other delivery that ends in this turn of the loop.

        Returns once the entry is written (or kept in memory, as :meth:`record`
        would): the caller hands the outcome out only then, so an outcome seen
        as delivered is in the journal, a killed process or not. A store that
        cannot write several at once (no ``record_many``) writes it at once;
        one that can send it with its next round trip (``record_later``, Redis)
        does so, and it is kept here if that fails.
        """
        at = self._clock()
        later = getattr(self.inner, "record_later", None)
        if later is not None and not self.pending.ops:  # with kept writes, after them, in order: record()
            # Kept here if refused, even when this task is cancelled meanwhile: it is done once written or kept.
            await later(key, at, lambda exc: self.pending.refused(("record", key, at), exc))
            return
        if getattr(self.inner, "record_many", None) is None:
            self.record(key, at)
            return
        loop = asyncio.get_running_loop()
        if not self._group:
            loop.call_soon(self._write_group)
        done = loop.create_future()
        self._group.append((key, at, done))
        await done

    def _write_group(self) -> None:
        group, self._group = self._group, []
        try:
            if not self.pending.ops:
                try:
                    self.inner.record_many([(key, at) for key, at, _ in group])  # type: ignore[attr-defined]
                    group_written = True
                except OSError:
                    group_written = False  # kept one by one below, in order, as record() keeps them
            else:
                group_written = False
            if not group_written:
                for key, at, _ in group:
                    self.pending.write(("record", key, at))
        except Exception as exc:  # noqa: BLE001 - the deliveries happened; at worst a rerun merges them again
            log.error("could not record %d deliveries in the journal: %s", len(group), type(exc).__name__)
        finally:
            for _, _, done in group:
                if not done.done():
                    done.set_result(None)

    def prefetch(self, keys: Sequence[str]) -> None:
        """Read ahead for a batch (a store that can: Redis, one round trip); writes kept here still win."""
        prefetch = getattr(self.inner, "prefetch", None)
        if prefetch is not None:
            prefetch(keys)


def flush_all(stores: Sequence[Any]) -> int:
    """Retry every kept write; the number still waiting."""
    left = 0
    for store in stores:
        pending = getattr(store, "pending", None)
        if isinstance(pending, PendingWrites):
            pending.flush()
            left += len(pending)
    return left


def cancel_all(stores: Sequence[Any]) -> None:
    for store in stores:
        pending = getattr(store, "pending", None)
        if isinstance(pending, PendingWrites):
            pending.cancel()
