"""Background WAL checkpoints for SQLite files.

In WAL mode every commit appends the pages it changed to the ``-wal`` file, and a checkpoint
copies them back into the database file and fsyncs it. SQLite's automatic checkpoint runs
inside the commit that crosses ``wal_autocheckpoint``, so one writer in every few dozen pays
for all of them: on a 1M-item index an ``add`` of 1,000 items takes ~50 ms, and the one that
checkpoints ~600 ms, nearly all of it waiting on the disk.

:class:`WalCheckpointer` moves that work to a thread with its own connection. Writers report
each commit (:meth:`~WalCheckpointer.committed`, a few microseconds); every ``soft_changes``
changed rows the thread runs a passive checkpoint, which blocks neither readers nor writers: the
long copy, while the writer goes on encoding and inserting.

The WAL also has to rewind to its start now and then, or the file and its index grow without
bound. A writer rewinds it when every frame has been copied back, so the frames committed
during a pass have to be copied while no one writes: a RESTART checkpoint, which holds the write
lock for that copy and its fsync (~50-200 ms for a few thousand pages on these disks; a writer
waiting for it sleeps in SQLite's busy handler). The thread runs it, never waiting for the lock
(busy timeout 0; after a second passive copy of most of what came during the first), only

1. when no write was committed during the pass: there is nothing left to copy and no writer to
   hold up (a catalog fed in bursts rewinds between bursts, for free); or
2. when the WAL holds ``rewind_frames`` frames or more: under a steady stream of writes, one
   short stall every ~``rewind_frames`` pages instead of one per pass.

If the thread falls behind (or a process forks without it), ``wal_autocheckpoint``, kept on every
connection above ``rewind_frames``, checkpoints and rewinds in the commit, as SQLite always does.

Errors in the thread (a busy database, a removed file) are logged; a checkpoint is an
optimisation, never part of a transaction's outcome.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

log = logging.getLogger("semid_index.storage")

SOFT_CHANGES = 20_000  # rows changed since the last pass before the thread runs another
REWIND_FRAMES = 40_000  # WAL frames (pages) from which a pass ends with a RESTART checkpoint


class WalCheckpointer:
    """Checkpoints one SQLite file's WAL from a daemon thread (started on first use)."""

    def __init__(self, path: str, *, soft_changes: int = SOFT_CHANGES,
                 rewind_frames: int = REWIND_FRAMES):
        self.path = path
        self.soft_changes = soft_changes
        self.rewind_frames = rewind_frames
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._changes = 0  # rows changed since the last pass began
        self._pending = False  # a pass was asked for and has not finished
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.passes = 0  # finished passes (for tests and benchmarks)
        self.rewinds = 0  # passes that ended with a successful RESTART checkpoint

    # ------------------------------------------------------------------ writer side
    def committed(self, dbapi_conn: sqlite3.Connection, info: dict) -> None:
        """Call after each write transaction commits, on the writer's thread and connection;
        ``info`` is a dict that lives as long as that connection (SQLAlchemy's
        ``PoolProxiedConnection.info``)."""
        if os.getpid() != self._pid:  # a forked child: its writers' autocheckpoint takes over
            return
        total = dbapi_conn.total_changes
        changed = total - info.get("semid_changes", 0)
        info["semid_changes"] = total
        with self._lock:
            if self._closed:
                return
            self._changes += max(changed, 0)
            if not self._pending and self._changes >= self.soft_changes:
                self._changes = 0
                self._pending = True
                self._start()
                self._wake.notify()

    def wait(self) -> None:
        """Block until no pass is running or asked for (benchmarks; copying the file)."""
        with self._lock:
            while self._pending and self._thread is not None and self._thread.is_alive():
                self._wake.wait()

    def close(self) -> None:
        """Stop the thread, letting a running checkpoint finish (it is safe to interrupt, but
        finishing keeps the file small for the next opener)."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # ------------------------------------------------------------------ thread side
    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="semid-wal-checkpoint",
                                            daemon=True)
            self._thread.start()

    def _pass(self, conn: sqlite3.Connection) -> None:
        """One pass: the long passive copy, then the short RESTART when it is due (above)."""
        busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        with self._lock:
            idle = self._changes == 0  # no commit reported since this pass began
        if not busy and (idle or frames >= self.rewind_frames):
            if not idle:  # first copy, unlocked, most of what came during the long pass
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            busy, _frames, _copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:
                with self._lock:
                    self.rewinds += 1

    def _run(self) -> None:
        conn = None
        try:
            # timeout 0: a checkpoint never waits for a lock, it copies what it can
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            while True:
                with self._lock:
                    while not self._pending and not self._closed:
                        self._wake.wait()
                    if self._closed:
                        return
                try:
                    self._pass(conn)
                except sqlite3.OperationalError as e:  # e.g. the file is locked exclusively
                    log.debug("background checkpoint of %s: %s", self.path, e)
                with self._lock:
                    self.passes += 1
                    # commits that crossed the threshold during the pass go again at once
                    self._pending = self._changes >= self.soft_changes
                    if self._pending:
                        self._changes = 0
                    self._wake.notify_all()
        except sqlite3.Error as e:
            log.warning("background WAL checkpoints of %s stopped: %s (SQLite's automatic "
                        "checkpoint takes over)", self.path, e)
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                self._pending = False
                self._wake.notify_all()
