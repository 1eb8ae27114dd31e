"""Open a page in headless Chromium as a user would; report console output, page requests, the final DOM."""

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


@dataclass
class PageRun:
    console: list[str]
    requests: list[str]  # URLs the page itself asked for (not chromium's own housekeeping)
    dom: str
    screenshot: Path


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is missing: `make test` installs Debian's chromium package"
    return path


def open_page(html: Path, work: Path, size=(1200, 2400)) -> PageRun:
    work.mkdir(parents=True, exist_ok=True)
    url = html.resolve().as_uri()
    net = work / "net.json"
    shot = work / "shot.png"
    first = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={work / 'profile1'}", f"--log-net-log={net}",
                            f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}", url],
                           capture_output=True, text=True, timeout=120)
    second = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={work / 'profile2'}", "--dump-dom", url],
                            capture_output=True, text=True, timeout=120)
    console = [line for line in (first.stderr + second.stderr).splitlines() if ":CONSOLE" in line]
    log = json.loads(net.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requests = []
    for e in log["events"]:
        p = e.get("params", {})
        if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in p and p.get("initiator") != "not an origin":
            if not p.get("url", "").startswith(("file:", "data:")):
                requests.append(p.get("url", ""))
    return PageRun(console, requests, second.stdout, shot)
