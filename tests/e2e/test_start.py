"""`llm101n start`: a real JupyterLab on a fresh learner workspace, plus the book, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import free_port, stop_process_group


@pytest.mark.timeout(600)  # the start alone may take 300 s on a busy machine (above)
def test_start_serves_jupyterlab_on_the_learner_workspace_and_the_book(tmp_path, browser):
    lab_port, book_port, app_port = free_port(), free_port(), free_port()
    workspace = tmp_path / "workspace"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STORYLIB_ROOT")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm101n.cli", "start", "--workspace", str(workspace),
         "--lab-port", str(lab_port), "--book-port", str(book_port), "--app-port", str(app_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    lines: list[str] = []
    try:
        # `llm101n start` may take 120 s to load the model and 60 s each for JupyterLab and the web app: on a busy
        # machine the whole start can take minutes (waiting longer costs nothing once it is up)
        deadline = time.time() + 300
        lab_url = None
        while time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            lines.append(line)
            if m := re.search(r"JupyterLab : (\S+)", line):
                lab_url = m.group(1)
            if "Ctrl-C stops everything" in line:
                break
        assert lab_url, "llm101n start printed no JupyterLab URL:\n" + "".join(lines[-30:])
        assert (workspace / "storylib" / "bigram.py").exists() and (workspace / "ch01_bigram.ipynb").exists()
        assert "The book   : http://127.0.0.1:" in "".join(lines), "".join(lines[-30:])
        story = next((ln for ln in lines if "Storyteller:" in ln), "")
        assert "M parameters, loaded offline" in story and "Once upon a time" in story, (
            "llm101n start should load the shipped storyteller (models/storyteller) and print its first words:\n"
            + "".join(lines[-30:])
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{book_port}/", timeout=10) as r:
            assert r.status == 200
        assert f"Web app    : http://127.0.0.1:{app_port}/" in "".join(lines), "".join(lines[-30:])
        assert "not answering" not in "".join(lines), "".join(lines[-30:])
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/v1/models", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["data"], "the web app's API should list the storyteller"
        assert (workspace / "storyteller.ipynb").exists(), "the chat notebook belongs in the workspace"
        assert "/lab/tree/storyteller.ipynb?token=" in "".join(lines), "".join(lines[-30:])

        token = lab_url.split("token=")[1]
        page = browser.new_page()
        page.goto(lab_url)
        page.wait_for_selector(".jp-DirListing-content", timeout=60_000)
        page.wait_for_selector(".jp-DirListing-item[title*='ch01_bigram.ipynb']", timeout=30_000)
        names = page.locator(".jp-DirListing-itemText").all_inner_texts()
        assert "storylib" in names and "ch01_bigram.ipynb" in names, names
        page.close()
        req = urllib.request.Request(
            f"http://127.0.0.1:{lab_port}/api/status", headers={"Authorization": f"token {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
    finally:
        stop_process_group(proc, signal.SIGINT, timeout=30)  # Ctrl-C, as a learner stops it
