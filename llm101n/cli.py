"""`llm101n`: the course's command line.

    llm101n start [--instructor]       JupyterLab on your workspace + the built book, on 127.0.0.1
    llm101n check ch01 [ch02.backward]  grade exercises of your storylib, as a table
    llm101n list [ch01]                 the exercises: id, points, book section, file, hint
    llm101n release DIR                 write the learner edition (stubs, notebooks, tests)
    llm101n honesty [ch01]              every exercise's tests fail on its stub and pass on the reference
    llm101n exercises [--check]         regenerate exercises/ from solutions/ with nbgrader
    llm101n class DIR                   grade a simulated class end to end with nbgrader
    llm101n data download|info          TinyStories for your machine
    llm101n train CONFIG [--resume]     train a storyteller (storylib.train), e.g. configs/cpu_learner.toml
    llm101n chat [--mode story]         ask for stories and changes (or continue one), streaming (storylib.storyteller)
    llm101n serve [--port 8080]         the chat model's OpenAI-compatible API and web app (storylib.serve)
    llm101n sft eval [MODEL] [--base B] the chat model's rules table on held-out conversations (storylib.sft)
    llm101n prefs export [--out FILE]   your thumbs up / down as preference pairs, JSONL (storylib.prefs)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from grading.exercises import discover, matches

ROOT = Path(__file__).resolve().parent.parent
# the course's JupyterLab defaults (no "get notified about Jupyter news?" prompt, no fetch): `llm101n start` puts
# them in the overrides.json of the JupyterLab it runs; a learner's own Lab settings still win over them
LAB_OVERRIDES = ROOT / "llm101n" / "lab_settings" / "overrides.json"


def cmd_check(args: argparse.Namespace) -> int:
    from grading.harness import HarnessError, check

    try:
        report = check(args.selectors, Path(args.root) if args.root else None, seed=None if args.fresh else 0,
                       level="process" if args.no_sandbox else None,
                       hidden=Path(args.hidden) if args.hidden else None, simulator=args.simulator)
    except (HarnessError, ValueError) as e:
        print(f"llm101n check: {e}", file=sys.stderr)
        return 2
    print(report.table())
    return 0 if all(r.passed for r in report.results) else 1


def cmd_list(args: argparse.Namespace) -> int:
    for ex in discover(ROOT):
        if not args.selectors or any(matches(ex.id, s) for s in args.selectors):
            print(f"{ex.id:<22} {ex.points:>2} pts  §{ex.section:<6} {ex.path.as_posix():<28} {ex.hint}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from grading.release import release

    try:
        written = release(Path(args.dest), update=args.update, force=args.force)
    except FileExistsError as e:
        print(f"llm101n release: {e}", file=sys.stderr)
        return 2
    print(f"learner edition in {args.dest}: {len(written)} files written")
    return 0


def cmd_honesty(args: argparse.Namespace) -> int:
    from grading.honesty import gate

    return gate(args.selectors or None, workers=args.workers, simulator=args.simulator)


def cmd_exercises(args: argparse.Namespace) -> int:
    from grading.nbclass import generate_exercises

    return generate_exercises(check_only=args.check)


def cmd_class(args: argparse.Namespace) -> int:
    from grading.nbclass import simulate

    return simulate(Path(args.dir).resolve())


def cmd_data(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    from storylib import data

    return int(data.main(args.rest) or 0)


def _storylib_main(module: str, rest: list[str]) -> int:
    """Run storylib.<module>.main(rest) with the storylib of the folder you are in (a workspace: your own code),
    else the reference; a workspace from before the module existed is told how to update."""
    import importlib

    from grading.harness import HarnessError, find_root

    try:
        root = find_root()
    except HarnessError:
        root = ROOT
    sys.path.insert(0, str(root))
    if (ROOT / ".assets" / "tiktoken").is_dir():  # tiktoken's offline cache (scripts/assets.sh)
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT / ".assets" / "tiktoken"))
    try:
        mod = importlib.import_module(f"storylib.{module}")
    except ModuleNotFoundError as e:
        if e.name != f"storylib.{module}":
            raise
        print(f"llm101n: {root / 'storylib'} has no {module}.py; update your workspace with `llm101n start` "
              "(it adds new course files, keeping yours)", file=sys.stderr)
        return 2
    return int(mod.main(rest) or 0)


def cmd_train(args: argparse.Namespace) -> int:
    return _storylib_main("train", args.rest)


def cmd_chat(args: argparse.Namespace) -> int:
    return _storylib_main("storyteller", args.rest)


def cmd_serve(args: argparse.Namespace) -> int:
    return _storylib_main("serve", args.rest)


def cmd_sft(args: argparse.Namespace) -> int:
    return _storylib_main("sft", args.rest)


def cmd_prefs(args: argparse.Namespace) -> int:
    return _storylib_main("prefs", args.rest)


def _wait_http(url: str, proc: subprocess.Popen, seconds: float = 300) -> bool:
    """True once `url` answers; False if `proc` exits first or `seconds` pass (generous: a busy machine is slow)."""
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            time.sleep(0.5)
    return False


def _storyteller_hello() -> str:
    """Load the shipped default model with the reference storylib, in a child process; a line to print."""
    code = "from storylib.checkpoint import storyteller_hello; print(storyteller_hello())"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "models/storyteller did not load within 120 s"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        return f"models/storyteller could not be loaded: {last}"
    return r.stdout.strip()


def lab_settings_dir() -> Path:
    """The application settings folder of the JupyterLab that `llm101n start` runs (its overrides.json lives here)."""
    from jupyterlab.commands import get_app_dir

    return Path(get_app_dir()) / "settings"


def install_lab_overrides(settings_dir: Path | None = None) -> Path:
    """Merge the course's JupyterLab defaults (LAB_OVERRIDES) into `settings_dir`/overrides.json, keeping any
    other plugin's or setting's overrides there. Returns the file; writes it only when something changes."""
    path = (settings_dir or lab_settings_dir()) / "overrides.json"
    current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    merged = dict(current)
    for plugin, settings in json.loads(LAB_OVERRIDES.read_text(encoding="utf-8")).items():
        merged[plugin] = {**current.get(plugin, {}), **settings}
    if merged != current:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    return path


def cmd_export_c(args: argparse.Namespace) -> int:
    from storylib.export_c import main as export_c_main

    return export_c_main(args.rest)


def cmd_start(args: argparse.Namespace) -> int:
    from grading.release import release

    book = ROOT / "_build" / "html"
    if args.instructor:
        where = ROOT
    else:
        where = Path(args.workspace).resolve()
        fresh = not (where / "storylib").exists()
        release(where, update=not fresh)
        print(f"{'created' if fresh else 'updated'} your workspace: {where}  (your storylib lives here)")
    env = dict(os.environ, PYTHONPATH=str(where), STORYLIB_ROOT=str(where))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if (ROOT / ".assets" / "tiktoken").is_dir():  # tiktoken's offline cache (scripts/assets.sh)
        env.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT / ".assets" / "tiktoken"))
    install_lab_overrides()
    hello = _storyteller_hello()
    token = secrets.token_hex(16)
    procs = []
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--ip={args.host}",
         f"--port={args.lab_port}", f"--ServerApp.root_dir={where}", f"--IdentityProvider.token={token}"],
        env=env, cwd=where,
    )
    procs.append(lab)
    if book.is_dir():
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "http.server", str(args.book_port), "--bind", args.host, "--directory", str(book)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    # the web app and its OpenAI-compatible API (Chapter 16) run the reference storylib: they work from day one
    app = subprocess.Popen([sys.executable, "-m", "storylib.serve", "--host", args.host, "--port", str(args.app_port)],
                           env=dict(env, PYTHONPATH=str(ROOT)), cwd=ROOT)
    procs.append(app)
    lab_url = f"http://{args.host}:{args.lab_port}/lab?token={token}"
    ok = _wait_http(f"http://{args.host}:{args.lab_port}/api/status?token={token}", lab)
    app_ok = _wait_http(f"http://{args.host}:{args.app_port}/health", app)
    print("\n" + "=" * 72)
    print(f"  JupyterLab : {lab_url}" + ("" if ok else "   (not answering yet)"))
    if book.is_dir():
        print(f"  The book   : http://{args.host}:{args.book_port}/")
    else:
        print("  The book   : not built yet — run `make book`")
    print("  Your checks: llm101n check ch01   (in a terminal in JupyterLab)")
    print(f"  Storyteller: {hello}")
    print(f"  Chat       : http://{args.host}:{args.lab_port}/lab/tree/storyteller.ipynb?token={token}")
    print("               (your storylib: it tells stories once Chapters 5, 6 and 12 pass, and takes requests")
    print("               once Chapter 14 does; or `llm101n chat`)")
    print(f"  Web app    : http://{args.host}:{args.app_port}/   (OpenAI-compatible API at /v1)"
          + ("" if app_ok else "   (not answering yet)"))
    print("=" * 72 + "\n  Ctrl-C stops everything.", flush=True)
    if args.exit_after:
        time.sleep(args.exit_after)
        for p in procs:
            p.send_signal(signal.SIGINT if p is lab else signal.SIGTERM)
    try:
        lab.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    passthrough = {"train": cmd_train, "chat": cmd_chat, "serve": cmd_serve, "sft": cmd_sft, "prefs": cmd_prefs,
                   "export-c": cmd_export_c}
    if argv[:1] and argv[0] in passthrough:  # all that follows is the storylib module's, its --help included
        return passthrough[argv[0]](argparse.Namespace(rest=argv[1:]))
    parser = argparse.ArgumentParser(prog="llm101n", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="grade exercises of your storylib")
    p.add_argument("selectors", nargs="+", metavar="ID", help="a chapter (ch01) or an exercise (ch01.counts)")
    p.add_argument("--root", help="the folder holding storylib/ (default: found from the current folder)")
    p.add_argument("--fresh", action="store_true", help="fresh random inputs (a new seed), as a graded run draws them")
    p.add_argument("--hidden", metavar="DIR", help="an instructor's folder of extra (unreleased) test files")
    p.add_argument("--no-sandbox", action="store_true",
                   help="keep the process boundary but skip bubblewrap (to debug a sandbox problem)")
    p.add_argument("--simulator", action="store_true",
                   help="run the cuda_labs kernels on the CUDA simulator even where there is a GPU")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("list", help="list the exercises")
    p.add_argument("selectors", nargs="*", metavar="ID")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("release", help="write the learner edition into DIR")
    p.add_argument("dest", metavar="DIR")
    p.add_argument("--update", action="store_true", help="add only files that are not there yet")
    p.add_argument("--force", action="store_true", help="overwrite the packages in DIR")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("honesty", help="run the honesty gate")
    p.add_argument("selectors", nargs="*", metavar="ID")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--simulator", action="store_true",
                   help="run the cuda_labs kernels on the CUDA simulator even where there is a GPU")
    p.set_defaults(func=cmd_honesty)

    p = sub.add_parser("exercises", help="regenerate exercises/ from solutions/")
    p.add_argument("--check", action="store_true", help="only report whether exercises/ is stale")
    p.set_defaults(func=cmd_exercises)

    p = sub.add_parser("class", help="grade a simulated class with nbgrader")
    p.add_argument("dir", metavar="DIR", help="the nbgrader course folder to create (replaced if present)")
    p.set_defaults(func=cmd_class)

    p = sub.add_parser("data", help="TinyStories: download | info")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_data)

    for name, func, help_ in (  # all that follows the name is the storylib module's own (its --help included)
        ("train", cmd_train, "train a storyteller: CONFIG [--resume] [--set k=v]; export CKPT OUT"),
        ("chat", cmd_chat, "ask for stories in the terminal: [--mode chat|story] [--prompt TEXT] ..."),
        ("serve", cmd_serve, "the chat model's API and web app: [--port 8080] [--max-batch N] [--api-key K] "
                             "[--users FILE]"),
        ("sft", cmd_sft, "Chapter 14's evaluation by rules: eval [MODEL ...] [--base B] [--n N]"),
        ("prefs", cmd_prefs, "your thumbs up / down as preference pairs: export [--db PATH ...] [--out FILE]"),
        ("export-c", cmd_export_c, "a model for storylib/c/storyteller.c: MODEL_DIR OUT.bin [--dtype fp32|int8] "
                                   "[--group 64]"),
    ):
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)

    p = sub.add_parser("start", help="start JupyterLab and the book")
    p.add_argument("--instructor", action="store_true", help="work on the reference storylib, not a workspace")
    p.add_argument("--workspace", default=str(ROOT / "workspace"))
    p.add_argument("--app-port", type=int, default=8080, help="the storyteller web app and API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--lab-port", type=int, default=8888)
    p.add_argument("--book-port", type=int, default=8000)
    p.add_argument("--exit-after", type=float, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_start)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
