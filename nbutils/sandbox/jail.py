"""The sandbox's operating-system layers, applied in the child forked for one snippet.

In order, each holding when the ones before it are bypassed:

1. **fds**: 0-2 point at /dev/null and the reply pipe is fd 3; every other descriptor is
   closed. Closing 0-2 then frees nothing a later `open` could use (it is refused anyway).
2. **uid drop** (only when the worker runs as root): `setgroups([])`, then gid and uid `nobody`,
   so the child cannot signal, trace or read the files of root's processes.
3. **rlimits**: no new descriptors (NOFILE 4), no file growth (FSIZE 0), no new processes
   (NPROC 0), no core dumps, a CPU cap and a memory cap (AS: the worker's size plus `memory_mb`).
4. **seccomp-bpf** (libseccomp through `pyseccomp`, with `no_new_privs`): an allowlist of about
   thirty system calls, enough for Python to compute on memory it already has and write its
   reply. open/openat, stat/newfstatat/statx, socket, connect, kill/tkill/tgkill, ptrace, execve,
   clone/fork, unlink, rename, truncate, chmod, setuid, prctl, ... return EPERM whatever Python the snippet reaches
   (ctypes included). It works the same for root and for ordinary users, so when the worker is
   not root it is the containment that must hold alone.

The filter is built and compiled to BPF once in the worker (`build_filter`) and only loaded
(two prctl calls) in each child.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import sys
from pathlib import Path

NOBODY = 65534
# System calls a child may make once the filter is loaded; everything else fails with EPERM.
ALLOWED_SYSCALLS = (
    # No stat of any kind (newfstatat, statx, stat, lstat, access): they take a path and would
    # tell a snippet the size, owner and mode of any file. After the jail the child only computes
    # on memory and writes to fd 3; Python stats only to import (refused anyway: no open) and
    # glibc's fstat() is newfstatat(fd, "", AT_EMPTY_PATH), whose path seccomp cannot read, so
    # fstat goes too (tests/tasks/test_sandbox_redteam.py: every honest snippet still runs).
    "read", "write", "writev", "close", "lseek",  # the reply pipe, /dev/null
    "mmap", "munmap", "mremap", "mprotect", "brk", "madvise",  # memory (numpy, pymalloc)
    "futex", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "clock_gettime", "clock_getres", "gettimeofday", "clock_nanosleep", "nanosleep",
    "getrandom", "getpid", "getppid", "gettid", "sched_yield", "sched_getaffinity", "getrusage",
    "exit", "exit_group",
)
CONTAINMENT_SECCOMP = "seccomp"
CONTAINMENT_NAMES = ("fresh-process", "fds", "uid-drop", "rlimits", "seccomp")


class ContainmentUnavailable(OSError):
    """The kernel cannot contain generated code here (no seccomp, or no libseccomp)."""


class CompiledFilter:
    """A seccomp program compiled once (in the worker) and loaded with two prctl calls in each
    child: libseccomp's own `load()` regenerates the BPF program every time, which costed
    about a tenth of a snippet's time (`make bench-sandbox`)."""

    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2

    def __init__(self, program: bytes):
        import ctypes

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        if not program or len(program) % 8:
            raise ContainmentUnavailable("libseccomp exported no BPF program")
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._program = SockFprog(len(program) // 8, ctypes.addressof(self._buffer))
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._ctypes = ctypes

    def load(self) -> None:
        """Install the filter in this process (irreversible); raises OSError if the kernel refuses."""
        ctypes, libc = self._ctypes, self._libc
        if libc.prctl(self.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
                self.PR_SET_SECCOMP, self.SECCOMP_MODE_FILTER, ctypes.byref(self._program), 0, 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))


def _exported_program(rules) -> bytes:
    read_fd, write_fd = os.pipe()  # the program is a few hundred bytes: fits the pipe's buffer
    try:
        with os.fdopen(write_fd, "wb", closefd=True) as sink:
            rules.export_bpf(sink)
        with os.fdopen(read_fd, "rb", closefd=True) as source:
            return source.read()
    except OSError as err:
        raise ContainmentUnavailable(f"could not export the seccomp program: {err}") from None


def build_filter() -> CompiledFilter:
    """The seccomp filter, compiled and not loaded, or raise ContainmentUnavailable saying why."""
    if not sys.platform.startswith("linux"):
        raise ContainmentUnavailable(f"seccomp is Linux-only; this is {sys.platform}")
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as err:  # RuntimeError: no libseccomp
        raise ContainmentUnavailable(f"pyseccomp/libseccomp not available: {err}") from None
    try:
        rules = pyseccomp.SyscallFilter(pyseccomp.ERRNO(errno.EPERM))
        for name in ALLOWED_SYSCALLS:
            try:
                rules.add_rule(pyseccomp.ALLOW, name)
            except (OSError, ValueError):
                pass  # not a system call on this architecture
        # no_new_privs (set again by CompiledFilter.load): the filter needs no privilege, and
        # no setuid program could shed it (execve is refused anyway).
        rules.set_attr(pyseccomp.Attr.CTL_NNP, 1)
    except OSError as err:
        raise ContainmentUnavailable(f"could not build a seccomp filter: {err}") from None
    return CompiledFilter(_exported_program(rules))


def probe(rules) -> str | None:
    """Load `rules` in a throwaway child and check that the kernel refuses `open`: None if it
    holds, else why not."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(read_fd)
            rules.load()
            try:
                os.open("/dev/null", os.O_RDONLY)
                code = 2  # the kernel let it through
            except PermissionError:
                code = 0
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(write_fd)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    return {0: None, 1: "the kernel refused to load a seccomp filter",
            2: "a loaded seccomp filter did not refuse open()"}.get(code, f"probe failed ({status})")


def _virtual_memory_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def jail(reply_fd: int, timeout: float, memory_mb: int, rules, vm_bytes: int | None = None,
         timings: dict | None = None) -> list[str]:
    """In the forked child: apply every layer (see the module's docstring); returns the names of
    the layers applied. `rules` None means no seccomp (only with the user's consent). `timings`,
    if given, receives the seconds each layer took (for `make bench-sandbox`)."""
    import resource
    from time import perf_counter

    clock = perf_counter()

    def lap(name):
        nonlocal clock
        if timings is not None:
            now = perf_counter()
            timings[name] = now - clock
            clock = now

    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.dup2(reply_fd, 3)
    os.closerange(4, 1 << 16)
    layers = ["fresh-process", "fds"]
    lap("fds")
    if os.geteuid() == 0:  # root ignores RLIMIT_NPROC and could raise its own limits
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        layers.append("uid-drop")
        lap("uid-drop")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails, no kill
    vm = vm_bytes if vm_bytes is not None else _virtual_memory_bytes()
    limits = [
        (resource.RLIMIT_NOFILE, 4),          # fds 0-3 are taken: no open(), no socket()
        (resource.RLIMIT_FSIZE, 0),           # no file grows
        (resource.RLIMIT_NPROC, 0),           # no fork, so no os.system or subprocess
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, int(math.ceil(timeout)) + 1),
    ]
    if vm is not None:  # the child starts as a copy of the worker: cap growth beyond that
        limits.append((resource.RLIMIT_AS, vm + memory_mb * 1024 * 1024))
    for limit, value in limits:
        resource.setrlimit(limit, (value, value))
    layers.append("rlimits")
    lap("rlimits")
    if rules is not None:
        rules.load()
        layers.append("seccomp")
        lap("seccomp")
    return layers


def containment_label(seccomp: bool, root: bool) -> str:
    """The layers a child gets here, as the run record names them."""
    return "+".join(name for name in CONTAINMENT_NAMES
                    if (name != "seccomp" or seccomp) and (name != "uid-drop" or root))
