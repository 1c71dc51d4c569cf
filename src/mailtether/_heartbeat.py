"""Heartbeat: a source's run loop vouching, on a schedule, that it is still alive."""

from __future__ import annotations

import threading
from collections.abc import Callable

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import check_seconds
from mailtether._redaction import redacting_logger
from mailtether._status import SourceStatus, StatusBoard

__all__ = ["Heartbeat"]

log = redacting_logger("mailtether.status")


class Heartbeat:
    """Refreshes a source's ``alive_until`` every *every* seconds, while its run loop lives.

    Each beat calls ``status.heartbeat(source, alive_for=3 * every)``: two beats may be lost
    before readers see the source as :attr:`~mailtether.SourceState.STALE`. Beats come from a
    daemon thread, first at :meth:`start` and then every *every* seconds on *clock*, and only
    while *alive* returns ``True`` (give it the run loop thread's ``is_alive``: a loop that
    died must go stale even though its process lives on). The thread never dies of a failed
    beat: an error of the store is logged once per outage, and the next beat tries again.

    Args:
        status: The board the source reports to.
        source: The source's name.
        every: Seconds between beats (> 0).
        clock: Schedules the beats (``clock.sleep``).
        alive: Whether the run loop is alive; no beat is written while it says ``False``.
        on_beat: Given the status each beat wrote (the run loop learns of a pause from it);
            an exception it raises is logged.

    Example:
        >>> from mailtether import MemoryStore, SourceState, StatusBoard
        >>> from mailtether._heartbeat import Heartbeat  # mailtether.Heartbeat once exported
        >>> board = StatusBoard(MemoryStore(), notifiers=[])
        >>> _ = board.set("support@example.com/INBOX", SourceState.ONLINE)
        >>> heartbeat = Heartbeat(board, "support@example.com/INBOX", every=10, alive=lambda: True)
        >>> heartbeat.beat_now()
        >>> status = board.get("support@example.com/INBOX")
        >>> status.alive_until - status.heartbeat_at
        30.0
    """

    def __init__(
        self,
        status: StatusBoard,
        source: str,
        *,
        every: float,
        clock: Clock = SYSTEM_CLOCK,
        alive: Callable[[], bool],
        on_beat: Callable[[SourceStatus], object] | None = None,
    ) -> None:
        self.status = status
        """The board the beats go to."""
        self.source = source
        """The source's name."""
        self.every = check_seconds(every, "Heartbeat(every)")
        """Seconds between beats."""
        self.clock = clock
        """The clock the beats are scheduled on."""
        self.alive = alive
        """Whether the run loop is alive."""
        self.on_beat = on_beat
        """Given the status each beat wrote."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beating = threading.Lock()  # one beat at a time: the thread's or beat_now's
        self._failed = 0  # beats failed in the current outage, under _beating
        self._was_alive = True  # under _beating

    @property
    def alive_for(self) -> float:
        """How long each beat vouches for the source: three times :attr:`every`."""
        return 3 * self.every

    def start(self) -> None:
        """Start beating in a daemon thread (the first beat at once).

        Raises:
            RuntimeError: if it is already running.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"the heartbeat of {self.source} is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"mailtether-heartbeat-{self.source}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop beating; wait up to *timeout* seconds for the thread (a beat in flight).

        The last ``alive_until`` stays: readers see the source STALE once it has passed.

        Returns:
            ``True`` if the thread has ended (or never ran); ``False`` if a beat is still
            stuck in the store after *timeout* (the daemon thread ends after it).
        """
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    def beat_now(self) -> None:
        """Beat at once, in the calling thread; for the run loop after a state change.

        Never raises for a failed beat: it is logged like the thread's.
        """
        with self._beating:
            if not self._is_alive():
                return
            try:
                status = self.status.heartbeat(self.source, alive_for=self.alive_for)
            except Exception as error:  # the heartbeat must outlive any outage of the store
                self._failed += 1
                if self._failed == 1:
                    log.warning(
                        "%s: could not record its heartbeat (trying again every %g s; it reads "
                        "as stale after %g s without one): %s",
                        self.source,
                        self.every,
                        self.alive_for,
                        error,
                    )
                return
            if self._failed:
                log.info(
                    "%s: heartbeat recorded again after %d failed beat(s)",
                    self.source,
                    self._failed,
                )
                self._failed = 0
            if status is not None and self.on_beat is not None:
                try:
                    self.on_beat(status)
                except Exception:
                    log.exception("%s: the heartbeat's on_beat raised", self.source)

    def _is_alive(self) -> bool:
        try:
            alive = bool(self.alive())
        except Exception:
            log.exception(
                "%s: the heartbeat's alive() check raised; counted as not alive", self.source
            )
            alive = False
        if alive != self._was_alive:
            self._was_alive = alive
            if not alive:
                log.warning(
                    "%s: its run loop is not running; no more heartbeats, it will read as stale",
                    self.source,
                )
        return alive

    def _run(self) -> None:
        while True:
            self.beat_now()
            if self.clock.sleep(self.every, self._stop):
                return

    def __repr__(self) -> str:
        running = self._thread is not None and self._thread.is_alive()
        return (
            f"Heartbeat({self.source!r}, every={self.every:g}, "
            f"{'running' if running else 'stopped'})"
        )
