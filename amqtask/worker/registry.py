"""Which task each worker process of one command is running, in memory the
supervisor shares with its processes, so that a message whose task killed its
process (a segfault, the OOM killer, kill -9) is not run in a loop.

Such a message goes back to its queue with the dead process's connection, and the
broker delivers it again, marked redelivered, to whichever process asks next. With
tasks run inside the consuming process (threads, solo, asyncio), nothing else
remembers that it was running when the process died: the next process would run it,
die, and so on. So each process writes the ids of the tasks it runs into its own
region of a shared mapping (plain memory writes, no system call), the supervisor
copies the ids of a process that died into a ring of lost tasks, and a process that
receives a redelivered message asks `lost(task_id)` before running it. It also
looks in the regions of processes that died and were not reaped yet, since the
broker may redeliver before the supervisor hears of the death.

Layout of the mapping (anonymous, shared with the processes forked after it):
per process, the pid (8 bytes), a byte set once it consumes, and `slots` slots; then the ring's next index (8
bytes) and `RING` entries. A slot or entry is a length byte and 255 bytes of task
id; an entry also has a count byte and 64 bytes of reason. A writer fills the id
first and the length last, and clears the length first, so a reader sees a whole
id or none.
"""
from __future__ import annotations

import mmap
import os
import struct
import threading

ID_BYTES = 255
SLOT = 1 + ID_BYTES
REASON_BYTES = 64
ENTRY = SLOT + 1 + REASON_BYTES
RING = 256
_PID = struct.Struct("<q")
_HEADER = _PID.size + 1  # the pid, then 1 once the process has started consuming


class RunningRegistry:
    def __init__(self, processes: int, slots: int) -> None:
        self.processes = processes
        self.slots = slots
        self._region = _HEADER + slots * SLOT
        self._ring_at = processes * self._region
        self._memory = mmap.mmap(-1, self._ring_at + _PID.size + RING * ENTRY)
        self._index: int | None = None  # this process's region, once `enter` was called
        self._free: list[int] = []
        self._lock = threading.Lock()

    # -- in a worker process ---------------------------------------------------------
    def enter(self, index: int) -> None:
        """This process is number `index` (0-based): its region starts empty, with its pid."""
        start = index * self._region
        self._memory[start:start + self._region] = bytes(self._region)
        _PID.pack_into(self._memory, start, os.getpid())
        self._index = index
        self._free = list(range(self.slots))

    def mark_ready(self) -> None:
        """This process has started (it consumes): if it ends now, it died, rather than
        could not start."""
        if self._index is not None:
            self._memory[self._index * self._region + _PID.size] = 1

    def started(self, task_id: str) -> int | None:
        """Record that `task_id` runs in this process; the slot to pass to `finished`
        (None when every slot is taken or the id is too long: that run is not guarded)."""
        data = task_id.encode()
        if self._index is None or len(data) > ID_BYTES:
            return None
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
        offset = self._slot_offset(self._index, slot)
        self._memory[offset + 1:offset + 1 + len(data)] = data
        self._memory[offset] = len(data)
        return slot

    def finished(self, slot: int | None) -> None:
        if slot is None or self._index is None:
            return
        self._memory[self._slot_offset(self._index, slot)] = 0
        with self._lock:
            self._free.append(slot)

    def lost(self, task_id: str) -> tuple[int, str] | None:
        """(how many processes it was lost with, why) when `task_id` was running in a
        process that died; None otherwise."""
        data = task_id.encode()
        found = self._in_ring(data)
        if found is not None:
            return found
        for index in range(self.processes):
            if index == self._index:
                continue
            pid = _PID.unpack_from(self._memory, index * self._region)[0]
            if pid and self._runs(index, data) and not _alive(pid):
                return 1, f"worker process {pid} died while running it"
        return None

    # -- in the supervisor ---------------------------------------------------------------
    def was_ready(self, index: int) -> bool:
        """Whether process `index` had started before it ended (see mark_ready)."""
        return self._memory[index * self._region + _PID.size] == 1

    def process_died(self, index: int, pid: int, how: str) -> list[str]:
        """Move what process `index` was running into the ring of lost tasks; returns
        those task ids."""
        ids = self._running(index)
        for task_id in ids:
            self._add_lost(task_id.encode(), f"worker process {pid} {how}")
        start = index * self._region
        self._memory[start:start + self._region] = bytes(self._region)
        return ids

    # -- the layout ------------------------------------------------------------------------
    def _slot_offset(self, index: int, slot: int) -> int:
        return index * self._region + _HEADER + slot * SLOT

    def _read_id(self, offset: int) -> bytes:
        length = self._memory[offset]
        return self._memory[offset + 1:offset + 1 + length] if length else b""

    def _running(self, index: int) -> list[str]:
        ids = (self._read_id(self._slot_offset(index, slot)) for slot in range(self.slots))
        return [data.decode(errors="replace") for data in ids if data]

    def _runs(self, index: int, data: bytes) -> bool:
        return any(self._read_id(self._slot_offset(index, slot)) == data for slot in range(self.slots))

    def _entry_offset(self, entry: int) -> int:
        return self._ring_at + _PID.size + entry * ENTRY

    def _in_ring(self, data: bytes) -> tuple[int, str] | None:
        for entry in range(RING):
            offset = self._entry_offset(entry)
            if self._read_id(offset) == data:
                count = self._memory[offset + SLOT]
                reason = bytes(self._memory[offset + SLOT + 1:offset + ENTRY]).rstrip(b"\0")
                return count, reason.decode(errors="replace")
        return None

    def _add_lost(self, data: bytes, reason: str) -> None:
        data = data[:ID_BYTES]
        previous = self._in_ring(data)
        count = min(255, (previous[0] if previous else 0) + 1)
        if previous is not None:  # counted again where it stands
            entry = next(e for e in range(RING) if self._read_id(self._entry_offset(e)) == data)
        else:
            entry = _PID.unpack_from(self._memory, self._ring_at)[0] % RING
            _PID.pack_into(self._memory, self._ring_at, entry + 1)
        offset = self._entry_offset(entry)
        self._memory[offset] = 0
        self._memory[offset + 1:offset + 1 + len(data)] = data
        self._memory[offset + SLOT] = count
        text = reason.encode()[:REASON_BYTES].ljust(REASON_BYTES, b"\0")
        self._memory[offset + SLOT + 1:offset + ENTRY] = text
        self._memory[offset] = len(data)


def _alive(pid: int) -> bool:
    """Whether `pid` runs still (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel (a zombie then counts as running)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
