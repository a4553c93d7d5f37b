"""The embedded broker: kombu's ``filesystem://`` transport, made safe for several processes.

kombu's own transport creates a message file in the queue folder and only then
writes it, while a consumer moves away and reads any file it lists. A consumer that
lists the file in between reads it empty, and the worker dies on the JSON error
(celery/kombu#1551; seen here under load, one run in ~15). It also moves a taken
file to the system temp folder, which is a copy plus a delete when that folder is
on another filesystem, so two consumers can both take it.

Here a message is written to a staging folder next to the queue and renamed into
it, so a consumer only ever lists whole files, and a consumer takes a file by
renaming it into a sibling folder on the same filesystem, which exactly one
consumer can win. Exchange tables (fanout bindings) get the same treatment. A file
that still does not parse is logged and dropped instead of stopping the worker:
the store has the message, and the sweeper republishes it.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem, virtual
from kombu.transport.filesystem import exchange_queue_t
from kombu.utils.json import dumps, loads

__all__ = ["Channel", "Transport", "write_atomically"]

log = logging.getLogger("agentpost.broker")


class Channel(filesystem.Channel):
    """A filesystem channel whose writes are atomic renames."""

    # (The overrides match kombu's filesystem stubs, which differ from its virtual base.)
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        # The name kombu's consumers sort by (oldest first) and match on (its queue).
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        write_atomically(Path(self.data_folder_out) / name, dumps(payload).encode())

    def _get(self, queue: str) -> Any:  # type: ignore[override]
        wanted = f"{queue}.msg"
        folder = Path(self.data_folder_in)
        taken_folder = _sibling(folder, "taken")
        for name in sorted(os.listdir(folder)):
            if name.partition(".")[2] != wanted:
                continue
            taken = taken_folder / f"{os.getpid()}-{name}"
            try:
                # A rename within one filesystem: one consumer wins, the others skip it.
                os.rename(folder / name, taken)
            except OSError:  # taken by another consumer (or purged) since the listing
                continue
            try:
                payload = taken.read_bytes()
            finally:
                taken.unlink(missing_ok=True)
            try:
                return loads(payload.decode())
            except (UnicodeDecodeError, ValueError):
                log.error("dropped an unreadable broker file %s (%d bytes)", name, len(payload))
                continue
        raise Empty()  # kombu's signal for "nothing in this queue"

    def _table_file(self, exchange: str) -> Path:
        # kombu's checked path of an exchange's table (its stubs omit the method).
        file: Path = getattr(self, "_exchange_file")(exchange)  # noqa: B009
        return file

    def get_table(self, exchange: str) -> list[exchange_queue_t]:  # type: ignore[override]
        file = self._table_file(exchange)
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        return [exchange_queue_t(*q) for q in loads(data.decode())] if data else []

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str | None, queue: str) -> None:
        self.control_folder.mkdir(mode=0o700, exist_ok=True)
        binding = exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._edit_table(
            exchange, lambda queues: queues if binding in queues else [binding, *queues]
        )

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any
    ) -> None:
        # Skip kombu's own table edit (an in-place rewrite): do it under the lock.
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        binding = exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._edit_table(exchange, lambda queues: [q for q in queues if q != binding])

    def _edit_table(
        self, exchange: str, change: Callable[[list[exchange_queue_t]], list[exchange_queue_t]]
    ) -> None:
        """Replace an exchange's bindings with ``change(bindings)``, if that differs.

        One lock file per exchange serialises the read-modify-write; the table itself
        is replaced by a rename, so readers need no lock.
        """
        file = self._table_file(exchange)
        with file.with_suffix(".lock").open("ab") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # released when the file closes
            queues = self.get_table(exchange)
            changed = change(queues)
            if changed != queues:
                write_atomically(file, dumps(changed).encode())


class Transport(filesystem.Transport):
    """``filesystem://`` with :class:`Channel`."""

    Channel = Channel


@functools.cache
def _sibling(folder: Path, name: str) -> Path:
    # Made once per process and folder, not once per publish or poll.
    path = folder.parent / f"{folder.name}.{name}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``target`` whole or not at all (a staging file renamed over it)."""
    staging = _sibling(target.parent, "staging") / f"{os.getpid()}-{uuid.uuid4()}"
    try:
        staging.write_bytes(data)
        os.replace(staging, target)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        raise ChannelError(f"Cannot add file {target.name!r} to {target.parent}") from exc
