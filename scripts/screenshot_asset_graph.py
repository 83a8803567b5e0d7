#!/usr/bin/env python3
"""Screenshot the Dagster UI's asset graph (lineage) of the `fruits` group in headless Chromium.

    python scripts/screenshot_asset_graph.py --out docs/asset_graph.png
    python scripts/screenshot_asset_graph.py --url http://127.0.0.1:3000 --out /tmp/graph.png

Without --url it starts its own webserver on a free loopback port the way `dagster dev` does
(`dagster-webserver -w workspace.yaml` from the repository root, with a throw-away DAGSTER_HOME),
and stops it afterwards. It then drives the system Chromium through the system chromedriver
(Debian: `apt-get install chromium chromium-driver`) with Selenium (given both paths, it needs no
download), opens the group's lineage page, waits until every asset name is in the page's DOM (the
graph has rendered), lets the zoom-to-fit settle and saves a PNG.

The webserver helpers here (`running_webserver`, `graphql`, `stop_process`) are also what the UI
tests use: one place that starts and stops the UI.

The browser runs headless, sandbox-less (containers), with a fresh profile directory and with its
background network services (sync, component updates, QUIC, ...) off: it only talks to loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("FRUITS_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FRUITS_CHROMEDRIVER", "/usr/bin/chromedriver"))
GROUP = "fruits"
# The repository of a `Definitions` object is named __repository__; the location is named after
# the module in workspace.yaml (no location_name there).
LOCATION = "fruits_assets"
REPOSITORY = "__repository__"
# Wide enough for the UI to draw full asset nodes (name, checks, kinds) instead of its zoomed-out
# "minimal" boxes, which middle-truncate long names ("preprocess…_images").
WINDOW = (2200, 1100)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

WORKSPACE_QUERY = """
{
  workspaceOrError {
    __typename
    ... on PythonError { message }
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
        }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 30) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:  # WebDriver errors come back as JSON with a 4xx/5xx
        payload = error.read()
        try:
            return json.loads(payload)
        except ValueError:
            raise RuntimeError(f"{method} {url}: HTTP {error.code}: {payload[:500]!r}") from None


def graphql(base_url: str, query: str, variables: dict | None = None) -> dict:
    """POST a query to the webserver's GraphQL API; returns `data`, raises on GraphQL errors."""
    reply = http_json("POST", f"{base_url}/graphql", {"query": query, "variables": variables or {}})
    if reply.get("errors"):
        raise RuntimeError(f"GraphQL errors: {reply['errors']}")
    return reply["data"]


def webserver_executable() -> str:
    """dagster-webserver of the running Python's environment, else the one on PATH."""
    candidate = Path(sys.executable).parent / "dagster-webserver"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("dagster-webserver")
    if not found:
        raise RuntimeError("dagster-webserver not found: install the project (pip install -e .)")
    return found


def webserver_command(port: int) -> list[str]:
    """What `dagster dev` runs for the UI: the webserver on the workspace file, on loopback."""
    return [webserver_executable(), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # the id was reused by someone else's group: ours is gone
        return False


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop the process group we started (the webserver and its code server, or chromedriver and
    its browser): SIGTERM, wait until every member is gone, SIGKILL the group on timeout."""
    pgid = proc.pid  # started with start_new_session=True: its own process-group id
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.1)
        else:
            continue
        break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@dataclasses.dataclass
class Webserver:
    url: str  # base URL, http://127.0.0.1:<port>
    proc: subprocess.Popen  # leader of its own process group (the code server is in it too)

    def stopped(self) -> bool:
        """True once the webserver and every process it started are gone."""
        return self.proc.poll() is not None and not _group_alive(self.proc.pid)


@contextlib.contextmanager
def running_webserver(
    port: int | None = None, startup_timeout: float = 120, dagster_home: Path | None = None
) -> Iterator[Webserver]:
    """Start `dagster-webserver -w workspace.yaml` on 127.0.0.1 from the repository root, as
    `dagster dev` does, with a temporary DAGSTER_HOME; yield it once the code location has
    loaded; always stop it (and its code server) on exit, in a try/finally."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="fruits-dagster-home-") as tmp:
        home = dagster_home or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():  # the repository's instance settings
            shutil.copy(REPO_ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
        log_path = Path(tmp) / "webserver.log"
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        base_url = f"http://127.0.0.1:{port}"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                webserver_command(port),
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_until_ready(base_url, proc, startup_timeout, log_path)
            yield Webserver(base_url, proc)
        finally:
            stop_process(proc)


@contextlib.contextmanager
def running_daemon(dagster_home: Path, log_path: Path) -> Iterator[subprocess.Popen]:
    """The dagster-daemon that `dagster dev` starts beside the webserver (it dequeues the runs the
    UI launches); always stopped on exit."""
    executable = Path(sys.executable).parent / "dagster-daemon"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(executable), "run", "-w", "workspace.yaml"],
            cwd=REPO_ROOT,
            env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


def wait_until_ready(base_url: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    """Poll /server_info, then the workspace, until the code location is LOADED."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"dagster-webserver exited with code {proc.returncode} before answering:\n" + _log_tail(log_path)
            )
        try:
            http_json("GET", f"{base_url}/server_info", timeout=5)
            entries = graphql(base_url, WORKSPACE_QUERY)["workspaceOrError"].get("locationEntries")
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
            last = f"locations: {entries}"
        except (OSError, RuntimeError, ValueError) as error:
            last = repr(error)
        time.sleep(0.5)
    raise RuntimeError(
        f"dagster-webserver at {base_url} not ready after {timeout:.0f}s ({last}):\n" + _log_tail(log_path)
    )


def asset_graph_url(base_url: str, group: str = GROUP) -> str:
    repo_path = urllib.parse.quote(f"{REPOSITORY}@{LOCATION}", safe="@")
    return f"{base_url.rstrip('/')}/locations/{repo_path}/asset-groups/{group}"


def chromium_args(profile_dir: str, window: tuple[int, int] = WINDOW) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-quic",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile_dir}",
        f"--window-size={window[0]},{window[1]}",
    ]


@contextlib.contextmanager
def chromium(window: tuple[int, int] = WINDOW):
    """A headless Chromium driven by Selenium through the system chromedriver; always quit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMEDRIVER, CHROMIUM):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: install Chromium and its driver (Debian: apt-get install chromium chromium-driver)"
            )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: nothing to download
    with tempfile.TemporaryDirectory(prefix="fruits-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in chromium_args(profile, window):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


# Text of the page, including the asset nodes' labels (HTML in the graph's SVG foreignObjects).
PAGE_TEXT_JS = "return document.body ? document.body.textContent : '';"
# The first visit to a UI on 127.0.0.1/localhost opens a "Join the Dagster community" dialog over
# the graph unless this browser-storage flag (what its "Skip" button sets) is there.
DISMISS_COMMUNITY_DIALOG_JS = "window.localStorage.setItem('communityNux', JSON.stringify('1'));"


def shown_names(text: str, names: list[str]) -> list[str]:
    """The names present in the page text, whole or middle-truncated by the UI ("ab…yz")."""

    def shown(name: str) -> bool:
        if name in text:
            return True
        return any(f"{name[:i]}…{name[j:]}" in text for i in range(1, len(name)) for j in range(i + 1, len(name)))

    return [name for name in names if shown(name)]


def screenshot_asset_graph(
    base_url: str,
    out: Path,
    asset_names: list[str],
    timeout: float = 60,
    settle: float = 2.0,
    window: tuple[int, int] = WINDOW,
) -> dict:
    """Open the group's asset graph, wait for every asset name in the DOM, save a PNG.

    Returns {"url", "found": names seen in the DOM, "bytes"}; raises if they never all appear
    (saving what the page showed next to `out`, as *.failed.png).
    """
    url = asset_graph_url(base_url)
    with chromium(window) as driver:
        driver.get(f"{base_url.rstrip('/')}/robots.txt")  # same origin: its localStorage
        driver.execute_script(DISMISS_COMMUNITY_DIALOG_JS)
        driver.get(url)
        deadline = time.monotonic() + timeout
        missing = list(asset_names)
        while time.monotonic() < deadline:
            found = shown_names(driver.execute_script(PAGE_TEXT_JS) or "", asset_names)
            missing = [name for name in asset_names if name not in found]
            if not missing:
                break
            time.sleep(0.5)
        if missing:
            failed = out.with_suffix(".failed.png")
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_bytes(driver.get_screenshot_as_png())
            raise RuntimeError(
                f"{url}: asset names {missing} not in the page after {timeout:.0f}s; "
                f"screenshot of what it showed: {failed}"
            )
        time.sleep(settle)  # the graph zooms to fit after layout: let the animation finish
        png = driver.get_screenshot_as_png()
        found = shown_names(driver.execute_script(PAGE_TEXT_JS) or "", asset_names)
    if not png.startswith(PNG_MAGIC):
        raise RuntimeError("WebDriver returned something that is not a PNG")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return {"url": url, "found": found, "bytes": len(png)}


def expected_asset_names() -> list[str]:
    """The asset keys of the code location, from the definitions themselves."""
    sys.path.insert(0, str(REPO_ROOT))
    from fruits_assets.definitions import defs

    keys = defs.resolve_asset_graph().get_all_asset_keys()
    return sorted(key.to_user_string() for key in keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="base URL of a running Dagster UI (default: start one)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "asset_graph.png")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for the graph")
    parser.add_argument("--window-size", default=f"{WINDOW[0]},{WINDOW[1]}", help="browser window W,H in pixels")
    args = parser.parse_args(argv)
    window = tuple(int(v) for v in args.window_size.split(","))

    names = expected_asset_names()
    if args.url:
        result = screenshot_asset_graph(args.url.rstrip("/"), args.out, names, args.timeout, window=window)
    else:
        with running_webserver() as server:
            result = screenshot_asset_graph(server.url, args.out, names, args.timeout, window=window)
    shown = ", ".join(result["found"])
    print(f"{args.out}: {result['bytes']:,} bytes, {result['url']} showing {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
