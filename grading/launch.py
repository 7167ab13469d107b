"""Start the learner's worker in its sandbox and connect to it (the grader's pytest calls `connect`).

The harness writes the configuration: which Python, the folder holding worker.py and wire.py, the folder of
the learner's packages, the worker's private home, its environment, and what the sandbox hides and exposes.
"""

from __future__ import annotations

import os
import subprocess

try:
    from . import remote, sandbox
except ImportError:  # pragma: no cover
    from grading import remote, sandbox


def connect(config: dict) -> remote.Connection:
    def start() -> tuple[subprocess.Popen, int, int]:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        argv = [config["python"], "-I", os.path.join(config["worker_dir"], "worker.py"), config["lib"],
                str(to_worker_r), str(from_worker_w)]
        prepared = sandbox.prepare(argv, workdir=config["home"], hide=config["hide"], expose=config["expose"],
                                   force_level=config.get("level"))
        try:
            proc = subprocess.Popen(prepared.argv, env=config["env"], cwd=config["home"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                                    pass_fds=(to_worker_r, from_worker_w), preexec_fn=prepared.preexec_fn)
        finally:
            os.close(to_worker_r)
            os.close(from_worker_w)
        return proc, from_worker_r, to_worker_w

    conn = remote.Connection(start, sandbox.kill_group)
    remote.RemoteImporter(conn, trusted=config.get("trusted", {})).install()
    remote.seed_both(conn)
    conn.ensure()  # start it now: its imports (torch) overlap with the collection of the tests here
    return conn
