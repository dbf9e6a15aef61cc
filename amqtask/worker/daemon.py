"""What an init script or unit file asks of a worker process before it runs: a
pidfile that refuses a second worker, running detached in the background, and
dropping root privileges. Linux/POSIX only, as the flags are."""
from __future__ import annotations

import errno
import grp
import os
import pwd
import sys
from pathlib import Path

from ..errors import AmqtaskError


class PidfileLocked(AmqtaskError):
    """The pidfile names a process that is alive: a worker is already running."""


class PrivilegeError(AmqtaskError):
    """--uid/--gid could not be applied, or root could be regained afterwards."""


class Pidfile:
    """A pidfile held by this process; `release()` removes it (only if it is still ours)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def acquire(cls, path: str | os.PathLike) -> "Pidfile":
        """Write this process's pid to `path`, created exclusively. A file naming a
        live process refuses (PidfileLocked); one naming a dead process, or none, or
        this very process, is stale and replaced, as Celery does."""
        target = Path(path)
        other = _read_pid(target)
        if other is not None and other != os.getpid() and _alive(other):
            raise PidfileLocked(f"pidfile {target} already exists: seems we're already running (pid {other})")
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another worker won the race just now
            raise PidfileLocked(f"pidfile {target} was created by another process meanwhile") from None
        except OSError as exc:
            raise AmqtaskError(f"cannot write pidfile {target}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
            f.flush()
            os.fsync(f.fileno())
        return cls(target)

    def release(self) -> None:
        if _read_pid(self.path) == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # alive, but not ours to signal
    return True


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, in the foreground, if the log file cannot be written."""
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise AmqtaskError(f"cannot write log file {path}: {exc.strerror}") from None


def detach(*, workdir: str | None = None, umask: int = 0) -> None:
    """Become a daemon: fork twice with a new session between, so no terminal can
    ever control it; the foreground process exits 0. stdin/out/err go to /dev/null
    (logs go to --logfile)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir(workdir or "/")
    os.umask(umask)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def drop_privileges(uid: str | None, gid: str | None) -> None:
    """As root: switch to `gid` (else the user's primary group), its supplementary
    groups, then `uid`; names or numbers. Refuses when root can be regained. A
    non-root process must not be given --uid/--gid (it cannot switch)."""
    if uid is None and gid is None:
        return
    if os.geteuid() != 0:
        raise PrivilegeError("--uid/--gid need the worker to start as root")
    # Hostname lookups load this codec on first use; Python's own files may not be
    # readable by the user we become (a Python installed under /root, say).
    import encodings.idna  # noqa: F401
    user = _user(uid) if uid is not None else None
    group_id = _group(gid) if gid is not None else (user.pw_gid if user else None)
    if group_id is not None:
        os.setgid(group_id)
    if user is not None:
        os.initgroups(user.pw_name, group_id if group_id is not None else user.pw_gid)
        os.setuid(user.pw_uid)
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PrivilegeError("root privileges could be regained after --uid; refusing to run")


def _user(value: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except KeyError:
        raise PrivilegeError(f"no such user: {value}") from None


def _group(value: str) -> int:
    try:
        return grp.getgrgid(int(value)).gr_gid if value.isdigit() else grp.getgrnam(value).gr_gid
    except KeyError:
        raise PrivilegeError(f"no such group: {value}") from None
