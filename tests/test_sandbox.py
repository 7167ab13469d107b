"""grading/sandbox.py: what a sandboxed worker can and cannot do, at each level this machine offers.

Each test starts a small Python worker against a fake course root in a temporary folder (never the real
repo), as the grader would: `prepare`, Popen with an inherited pipe, `kill_group`.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from grading import sandbox

NO_BWRAP = sandbox._bwrap_problem()
ROOT = os.geteuid() == 0
BWRAP = pytest.mark.skipif(bool(NO_BWRAP), reason=f"no bubblewrap sandbox here ({NO_BWRAP}); CI has one")
LEVELS = [pytest.param("bubblewrap", marks=BWRAP), "process"]


@pytest.fixture
def course():
    """A fake course root with a reference package and a venv, and a file beside it that is not hidden.

    It lives in /var/tmp, not /tmp: the bubblewrap worker gets a fresh /tmp, which would hide anything there
    whether or not `hide` works."""
    base = Path(tempfile.mkdtemp(prefix="llm101n-sandbox-test-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    base.chmod(0o755)  # so that nobody may enter it, as it may enter a real repo's parent
    root = base / "course"
    (root / "storylib").mkdir(parents=True)
    (root / "storylib" / "reference.py").write_text("ANSWER = 42\n")
    (root / ".venv" / "site-packages").mkdir(parents=True)
    (root / ".venv" / "site-packages" / "pkg.py").write_text("X = 1\n")
    (base / "outside.txt").write_text("visible\n")
    yield root
    shutil.rmtree(base)


def start(code, level, course, home, pass_fds=(), **limits):
    """Start `code` as a sandboxed worker; sys.argv[1:] are the inherited fds. Returns (proc, prepared)."""
    argv = [sys.executable, "-c", textwrap.dedent(code), *map(str, pass_fds)]
    prepared = sandbox.prepare(argv, workdir=home, hide=[course], expose=[course / ".venv"], force_level=level,
                               **limits)
    proc = subprocess.Popen(prepared.argv, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            pass_fds=pass_fds, preexec_fn=prepared.preexec_fn)
    return proc, prepared


def run(code, level, course, timeout=20, **limits):
    """Run `code` to its end; returns (returncode, stdout, stderr)."""
    with sandbox.workdir("llm101n-sandbox-test-") as home:
        proc, _ = start(code, level, course, home, **limits)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            sandbox.kill_group(proc)
    return proc.returncode, out, err


def readable(path) -> str:
    return f"""
        try:
            open({str(path)!r}).read(); print("read", {Path(path).name!r})
        except OSError as e:
            print("cannot read", {Path(path).name!r}, type(e).__name__)
    """


@pytest.mark.parametrize("level", LEVELS)
def test_hidden_folders_and_read_only_exposed_paths(level, course):
    site = course / ".venv" / "site-packages"
    code = readable(course / "storylib" / "reference.py") + readable(site / "pkg.py") + readable(
        course.parent / "outside.txt") + f"""
        try:
            open({str(site / "evil.py")!r}, "w"); print("wrote site-packages")
        except OSError as e:
            print("cannot write site-packages", type(e).__name__)
    """
    rc, out, err = run(code, level, course)
    assert rc == 0, err
    assert "read pkg.py" in out and "read outside.txt" in out
    if level == "bubblewrap":
        assert "cannot read reference.py FileNotFoundError" in out
        assert "cannot write site-packages" in out and not (site / "evil.py").exists()
    else:  # what level "process" does not protect, as its description says
        assert "read reference.py" in out
        assert "can read the reference storylib" in sandbox.describe("process")


@pytest.mark.parametrize("level", LEVELS)
def test_network(level, course):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        rc, out, err = run(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=5); print("connected")
            except OSError as e:
                print("no network", type(e).__name__)
        """, level, course)
    assert rc == 0, err
    assert ("no network" if level == "bubblewrap" else "connected") in out


@BWRAP
@pytest.mark.skipif(not ROOT, reason="the worker changes user only when the grader runs as root")
def test_root_grader_runs_the_worker_as_nobody(course):
    level = "bubblewrap"
    rc, out, err = run("""
        import os
        print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
        print(open("/proc/self/status").read().split("CapEff:")[1].split()[0])
    """, level, course)
    assert rc == 0, err
    assert out.split("\n")[:2] == ["65534 65534 65534 []", "0000000000000000"]
    assert "user nobody" in sandbox.describe(level)


@pytest.mark.parametrize("level", LEVELS)
def test_private_home_tmp_and_inherited_fd(level, course):
    r, w = os.pipe()
    in_tmp = Path("/tmp") / f"llm101n-sandbox-test-{uuid.uuid4().hex}"  # only bubblewrap's worker writes it
    with sandbox.workdir("llm101n-sandbox-test-") as home:
        proc, _ = start(f"""
            import os, sys, tempfile
            if {level == "bubblewrap"}:
                open({str(in_tmp)!r}, "w").write("x")  # into the sandbox's own /tmp
            open(os.path.join(os.environ["HOME"], "note"), "w").write("x")
            with tempfile.NamedTemporaryFile() as f:
                tmp = f.name
            os.write(int(sys.argv[1]), f"{{os.environ['HOME']}}|{{tmp}}|{{os.getcwd()}}".encode())
        """, level, course, home, pass_fds=(w,))
        os.close(w)
        try:
            assert proc.wait(timeout=20) == 0, proc.stderr.read()
            got_home, tmp, cwd = read_within(r, 5).decode().split("|")
            assert Path(got_home) == Path(cwd) == home.resolve() and (home / "note").exists()
            assert Path(tmp).parent == home.resolve()
            assert not in_tmp.exists()
        finally:
            sandbox.kill_group(proc)
            os.close(r)
    assert not home.exists()


DAEMON = """
    import os, sys, time
    w, setsid = int(sys.argv[1]), {setsid}
    if os.fork() == 0:          # double fork: the daemon's parent exits at once
        if setsid:
            os.setsid()
        if os.fork() == 0:
            os.write(w, f"{{os.getpid()}}\\n".encode())  # it keeps w open for as long as it lives
            while True:
                time.sleep(1)
        os._exit(0)
    time.sleep(60)
"""


def read_within(fd, seconds) -> bytes:
    assert select.select([fd], [], [], seconds)[0], f"nothing came from the worker in {seconds} s"
    return os.read(fd, 4096)


def eof_within(fd, seconds) -> bool:
    """Whether every holder of the pipe's write end is gone within `seconds` (the read end sees EOF)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0] and not os.read(fd, 4096):
            return True
    return False


@pytest.mark.parametrize("level, setsid", [pytest.param("bubblewrap", True, marks=BWRAP), ("process", False)])
def test_kill_group_kills_forked_daemons(level, setsid, course):
    r, w = os.pipe()
    with sandbox.workdir("llm101n-sandbox-test-") as home:
        proc, _ = start(DAEMON.format(setsid=setsid), level, course, home, pass_fds=(w,))
        os.close(w)
        assert read_within(r, 20)  # the daemon runs
        sandbox.kill_group(proc)
        assert eof_within(r, 2), "a daemon of the worker survived kill_group"
    os.close(r)


@pytest.mark.skipif(not hasattr(os, "setsid"), reason="POSIX")
def test_process_level_cannot_kill_a_daemon_that_left_the_group(course):
    """The documented limit of level "process": setsid() takes a process out of reach of kill_group."""
    r, w = os.pipe()
    with sandbox.workdir("llm101n-sandbox-test-") as home:
        proc, _ = start(DAEMON.format(setsid=True), "process", course, home, pass_fds=(w,))
        os.close(w)
        daemon = int(read_within(r, 20))
        sandbox.kill_group(proc)
        try:
            assert not eof_within(r, 0.3)
        finally:
            os.kill(daemon, signal.SIGKILL)
        assert eof_within(r, 2)
    os.close(r)


@pytest.mark.parametrize("level", LEVELS)
def test_memory_hog_hits_the_limit(level, course):
    rc, out, err = run("""
        import sys
        hog = []
        try:
            while True:
                hog.append(bytearray(32 << 20))
        except MemoryError:
            print("MemoryError after", len(hog) * 32, "MiB")
            sys.exit(3)
    """, level, course, memory_bytes=256 << 20)
    assert rc == 3 or rc < 0 or rc > 128, (rc, out, err)  # MemoryError, or killed by a signal
    if rc == 3:
        assert int(out.split()[2]) <= 256


@pytest.mark.parametrize("level", LEVELS)
def test_cpu_limit_stops_a_busy_loop(level, course):
    start_time = time.monotonic()
    rc, out, err = run("while True: pass", level, course, cpu_seconds=1)
    assert rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGKILL), (rc, err)
    assert time.monotonic() - start_time < 15


@pytest.mark.parametrize("level", LEVELS)
def test_workdir_is_removed_even_with_read_only_folders_left_in_it(level, course):
    with sandbox.workdir("llm101n-sandbox-test-") as home:
        proc, _ = start("""
            import os
            for name, mode in (("locked", 0o500), ("closed", 0o000)):
                os.makedirs(f"{name}/deep")
                open(f"{name}/deep/file", "w").write("x")
                os.chmod(f"{name}/deep", mode)
                os.chmod(name, mode)
        """, level, course, home)
        try:
            assert proc.wait(timeout=20) == 0, proc.stderr.read()
            assert (home / "locked").exists()
        finally:
            sandbox.kill_group(proc)
    assert not home.exists()


def test_levels_without_bubblewrap(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "_bwrap_problem", lambda: "no bubblewrap")
    prepared = sandbox.prepare(["python"], workdir=tmp_path, hide=[], expose=[])
    assert prepared.level == "process"
    assert prepared.description.startswith("sandbox: process boundary only (no bubblewrap)")
    with pytest.raises(sandbox.SandboxError, match="no bubblewrap"):
        sandbox.prepare(["python"], workdir=tmp_path, hide=[], expose=[], force_level="bubblewrap")
    with pytest.raises(ValueError):
        sandbox.prepare(["python"], workdir=tmp_path, hide=[], expose=[], force_level="docker")
