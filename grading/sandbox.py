"""Start an untrusted Python worker (the learner's code) in a sandbox, as tight as this machine allows.

    with sandbox.workdir("llm101n-worker-") as home:
        prepared = sandbox.prepare(argv, workdir=home, hide=[COURSE_ROOT], expose=[assets])
        proc = subprocess.Popen(prepared.argv, env=env, cwd=home, pass_fds=(r, w), preexec_fn=prepared.preexec_fn)
        try:
            ...                                  # talk to the worker over the inherited fds r, w
        finally:
            sandbox.kill_group(proc)
        print(prepared.description)              # one line for the report's header

    prepare(argv, *, workdir, hide, expose, memory_bytes=MEMORY_BYTES, cpu_seconds=CPU_SECONDS,
            force_level=None) -> Prepared(argv, preexec_fn, level, description)
    describe(level=None) -> str                  # the description prepare would give, without preparing
    kill_group(proc)                             # SIGKILL the worker's process group, wait until it is gone
    workdir(prefix) -> context manager of Path   # the worker's private folder, removed afterwards

Both levels: the worker leads its own session and process group (kill_group kills what it forks), has
HOME and TMPDIR in `workdir`, and these limits: memory (RLIMIT_DATA), CPU seconds, file size, open files,
no core dumps, and when we are root also processes (against fork bombs).

Level "bubblewrap" (bwrap works here; CI, as root): the worker runs in bubblewrap with no network, its own
pid namespace (killing the group takes down every process inside, even one that called setsid), a read-only
view of `/`, fresh /tmp, /dev/shm and /run, the GPU devices (CUDA torch trained as nobody on an H100), each
folder of `hide` replaced by an empty one (the course repo: reference storylib, tests, grader), each path of
`expose` and the running Python (sys.prefix, sys.base_prefix) put back read-only, and `workdir` writable.
When we are root the worker runs as nobody/nogroup: bwrap runs as root (it must reach what only root can,
e.g. pyenv's Python in /root) and setpriv drops the worker's user, groups and capabilities. A folder that
nobody could not enter on the way to an exposed path (/root) is replaced by an empty one too.
Without root, bwrap uses a user namespace and the worker keeps our user id.

Level "process" (no bwrap, e.g. a learner's laptop): only the process group, the limits and the private
HOME/TMPDIR. The worker has the network, runs as our user, can read the reference storylib and write
wherever we can; a worker that calls setsid() leaves the process group, and kill_group cannot find it.

Start cost of the wrapper, `python -c pass` (median of 40; min in brackets): on an idle 16-core GPU
machine plain 82 ms (56), "process" +2 ms (+3: the `env` exec), "bubblewrap" as root +4 ms (+8); on the
busy 2-core CI machine bwrap + setpriv alone (wrapping `true`) cost 34 ms (18).
"""

from __future__ import annotations

import functools
import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

# Memory is limited with RLIMIT_DATA (private writable memory: heap, anonymous mmaps, thread stacks), not
# RLIMIT_AS, which counts address space only reserved: CUDA torch reserves 18 GiB of it (H100), and failed
# to start under RLIMIT_AS of 16 GiB. Measured VmData: `import torch, numpy, numba, transformers` and a small
# training loop 0.4 GiB (CPU, 2 cores); a CUDA training loop 1.9 GiB (16 cores; OpenBLAS keeps buffers per
# thread, so unpinned threads grow it: the harness sets OMP_NUM_THREADS).
MEMORY_BYTES = 4 << 30
CPU_SECONDS = 900  # a backstop for a busy loop; the harness's wall-clock timeouts come first
FILE_BYTES = 256 << 20
OPEN_FILES = 1024
PROCESSES = 1024  # only when the worker becomes nobody: RLIMIT_NPROC counts all of a user's processes
SANDBOX_UID = SANDBOX_GID = 65534  # nobody / nogroup
KILL_WAIT = 5.0  # seconds kill_group waits for SIGKILLed processes to be gone
LEVELS = ("bubblewrap", "process")


class SandboxError(RuntimeError):
    """The requested sandbox level cannot be had on this machine."""


@dataclass(frozen=True)
class Prepared:
    argv: list[str]  # the command to pass to subprocess.Popen
    preexec_fn: Callable[[], None]  # pass to Popen too: new session, limits
    level: str  # "bubblewrap" or "process"
    description: str  # one line for the grader's report header


def prepare(
    argv: list[str],
    *,
    workdir: Path,
    hide: list[Path],
    expose: list[Path],
    memory_bytes: int = MEMORY_BYTES,
    cpu_seconds: int = CPU_SECONDS,
    force_level: str | None = None,
) -> Prepared:
    """The command and pre-exec hook that start `argv` as a sandboxed worker living in `workdir`."""
    level = _level(force_level)
    home = Path(workdir).resolve()
    if level == "bubblewrap":
        argv = _bwrap_argv(argv, home, [Path(p) for p in hide], [Path(p) for p in expose])
    else:
        argv = ["/usr/bin/env", f"HOME={home}", f"TMPDIR={home}", *argv]
    limits = _limits(memory_bytes, cpu_seconds, as_nobody=level == "bubblewrap" and _root())
    return Prepared(argv, functools.partial(_start_worker, limits), level, describe(level))


def describe(level: str | None = None) -> str:
    """What the worker's sandbox protects, in one line, for `level` (default: the best one available)."""
    level = _level(level)
    if level == "bubblewrap":
        user = pwd.getpwuid(SANDBOX_UID if _root() else os.getuid()).pw_name
        return f"sandbox: bubblewrap, user {user}, no network, reference hidden, limits on memory and CPU"
    why, user = _bwrap_problem() or "forced", pwd.getpwuid(os.getuid()).pw_name
    return (f"sandbox: process boundary only ({why}): the worker runs as {user} with the network, can read the "
            f"reference storylib and write wherever {user} can")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the worker's group, also after the worker itself is gone, then reap it."""
    deadline = time.monotonic() + KILL_WAIT
    while True:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.poll()
        if not _group_alive(proc.pid) or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    proc.wait()


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A private temporary folder (0700) for one worker; as root, owned by the user the worker becomes.

    The worker controls what is in it: the grader should write there only before the worker starts, and
    not follow links it finds there."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if _root():
        os.chown(path, SANDBOX_UID, SANDBOX_GID)
    try:
        yield path
    finally:
        _remove(path)


# ---------------------------------------------------------------- choosing the level


def _level(force_level: str | None) -> str:
    if force_level not in (None, *LEVELS):
        raise ValueError(f"unknown sandbox level {force_level!r}; expected one of {LEVELS}")
    problem = _bwrap_problem()
    if force_level == "bubblewrap" and problem:
        raise SandboxError(f"the bubblewrap sandbox is not available: {problem}")
    return force_level or ("process" if problem else "bubblewrap")


@functools.cache
def _bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox a worker here (None: it can), from one quick trial start."""
    if not shutil.which("bwrap"):
        return "no bubblewrap"
    if _root() and not shutil.which("setpriv"):
        return "no setpriv to leave root"
    probe = [*_bwrap_options(), *_drop_root(), shutil.which("true") or "/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap failed: {e}"
    message = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0][:160]
    return None if done.returncode == 0 else f"bubblewrap failed: {message}"


def _root() -> bool:
    return os.geteuid() == 0


# ---------------------------------------------------------------- the bubblewrap command


def _bwrap_options() -> list[str]:
    # Root needs no user namespace (and one would stop setpriv from becoming nobody); others need one.
    namespaces = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not _root():
        namespaces.append("--unshare-user")
    # No --new-session: the worker already has its own session with no terminal, and bwrap's would take it
    # out of the process group that kill_group kills.
    return [
        shutil.which("bwrap"), "--die-with-parent", *namespaces,
        "--ro-bind", "/", "/",
        "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", *_gpu_devices(),
        "--proc", "/proc",
        "--perms", "1777", "--tmpfs", "/tmp",
        "--tmpfs", "/run",  # sockets of other services (docker, dbus, an ssh agent) work without a network
    ]  # fmt: skip


def _bwrap_argv(argv: list[str], home: Path, hide: list[Path], expose: list[Path]) -> list[str]:
    # The running Python, whose prefixes pyenv and venvs may put inside a hidden folder.
    expose = [*expose, Path(sys.prefix), Path(sys.base_prefix)]
    expose = [p.resolve() for p in expose if p.exists()]
    hidden = _closed_folders([*expose, home]) + [p.resolve() for p in hide if p.is_dir()]
    cmd = _bwrap_options()
    for path in hidden:
        cmd += ["--tmpfs", str(path)]
    for path in expose:
        cmd += ["--ro-bind", str(path), str(path)]
    cmd += ["--bind", str(home), str(home), "--chdir", str(home), "--setenv", "HOME", str(home),
            "--setenv", "TMPDIR", str(home)]
    return [*cmd, *_drop_root(), *argv]


def _drop_root() -> list[str]:
    """As root, run the worker as nobody with no groups, no capabilities, and no way to gain them back."""
    if not _root():
        return []
    return [shutil.which("setpriv"), f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def _gpu_devices() -> list[str]:
    devices = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    return [arg for dev in devices for arg in ("--dev-bind-try", dev, dev)]


def _closed_folders(paths: list[Path]) -> list[Path]:
    """The top folders on the way to `paths` that nobody cannot enter (when we are root): hidden, so that
    bwrap builds a path through them that holds the bound path alone."""
    if not _root():
        return []
    closed = []
    for path in paths:
        for folder in reversed(path.parents):
            mode = folder.stat()
            if not mode.st_mode & stat.S_IXOTH and mode.st_uid != SANDBOX_UID:
                if folder not in closed:
                    closed.append(folder)
                break
    return closed


# ---------------------------------------------------------------- in the child, and after it


def _limits(memory_bytes: int, cpu_seconds: int, as_nobody: bool) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for each limit, never above the hard limit we have (raising it needs root)."""
    wanted = [
        (resource.RLIMIT_DATA, memory_bytes, memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5),  # SIGXCPU first, SIGKILL 5 s later
        (resource.RLIMIT_FSIZE, FILE_BYTES, FILE_BYTES),
        (resource.RLIMIT_NOFILE, OPEN_FILES, OPEN_FILES),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if as_nobody:
        wanted.append((resource.RLIMIT_NPROC, PROCESSES, PROCESSES))
    limits = []
    for res, soft, hard in wanted:
        have = resource.getrlimit(res)[1]
        if have != resource.RLIM_INFINITY:
            soft, hard = min(soft, have), min(hard, have)
        limits.append((res, soft, hard))
    return limits


def _start_worker(limits: list[tuple[int, int, int]]) -> None:
    """Runs in the child between fork and exec: only system calls (Python's advice for preexec_fn)."""
    os.setsid()
    for res, soft, hard in limits:
        resource.setrlimit(res, (soft, hard))


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies don't count: they hold no resources, and pid 1
    may reap orphans only every few seconds (it does here)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            state, _ppid, group = stat_file.read_text().rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid and state not in "ZX":
                return True
    return False


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # folders the worker made read-only (as root, permissions don't stop us)
        os.chmod(path, 0o700)
        for folder, subfolders, _files in os.walk(path):
            for name in subfolders:
                sub = os.path.join(folder, name)
                if not os.path.islink(sub):
                    os.chmod(sub, 0o700)
        shutil.rmtree(path)
