"""`on_record(fn)`: call your own function for every finished record, off the call path.

Hooks run on one background thread, in the order they were added, once per record
(per run_id). The model call that made the record never waits for them, and an error
in a hook is counted and logged once, never raised. Use them to drive your own display
or alerts:

>>> import modelforge
>>> seen = []
>>> remove = modelforge.on_record(lambda record: seen.append(record.run_id))
>>> remove()  # stop receiving records
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from modelforge.records import CallRecord

Hook = Callable[[CallRecord], object]

_hooks: list[Hook] = []
_lock = threading.Lock()
_queue: queue.SimpleQueue[CallRecord | threading.Event] = queue.SimpleQueue()
_thread: threading.Thread | None = None


def on_record(fn: Hook) -> Callable[[], None]:
    """Call `fn(record)` for each finished `CallRecord`; returns a function that removes it.

    `fn` runs on a background thread; it may be slow or raise without affecting any
    call. A record reaches it whether or not the log is written (telemetry off too).
    """
    with _lock:
        _hooks.append(fn)

    def remove() -> None:
        with _lock:
            if fn in _hooks:
                _hooks.remove(fn)

    return remove


def active() -> bool:
    return bool(_hooks)


def dispatch(record: CallRecord) -> None:
    """Queue `record` for the hooks; returns at once."""
    _start()
    _queue.put(record)


def wait(timeout: float | None = 10.0) -> bool:
    """Wait until the hooks have seen every record queued so far; False on timeout."""
    if _thread is None:
        return True
    done = threading.Event()
    _queue.put(done)
    return done.wait(timeout)


def _start() -> None:
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="modelforge-hooks", daemon=True)
            _thread.start()


def _run() -> None:
    from modelforge.recorder import report_error

    while True:
        item = _queue.get()
        if isinstance(item, threading.Event):
            item.set()
            continue
        with _lock:
            hooks = list(_hooks)
        for hook in hooks:
            try:
                hook(item)
            except Exception as exc:
                report_error("on_record hook", exc)
