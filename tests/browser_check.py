"""`make browser-check`: /docs and /redoc rendered by headless Chromium with no route out of the machine.

Starts the real server (demo h1 + tissue-seg) as the container runs it, loads each page in Debian's
`chromium` with every host name but 127.0.0.1 unresolvable and a dead proxy, and checks that every
operation of the OpenAPI schema was rendered (Swagger UI's `opblock` elements, ReDoc's operation
sections). Then again with a bearer token configured and AUTH_OPEN=docs: the page renders and offers
its Authorize button. Screenshots in build/browser-check/.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from kit.artifacts.builder import package
from kit.local import serve_model

OUT = Path("build/browser-check")
OFFLINE = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no name resolves but the server's
    "--proxy-server=http://127.0.0.1:9",  # and nothing else reachable through a proxy (loopback bypasses it)
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=20000",  # run the page's scripts until it is idle (or 20 s of its time)
    *OFFLINE,
]
# What each page shows once rendered: Swagger UI's operation blocks, ReDoc's operation sections.
RENDERED = {"/docs": r'class="opblock opblock-', "/redoc": r'data-section-id="operation/'}


def chromium(url: str, *options: str) -> str:
    """The page's DOM after its scripts ran, in a fresh profile."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            ["chromium", *FLAGS, f"--user-data-dir={profile}", *options, url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    if done.returncode != 0:
        raise SystemExit(f"chromium failed on {url} ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def check(url: str, name: str, headers: dict[str, str]) -> list[str]:
    """Render /docs and /redoc of the server at `url`; the problems found (none: it passed)."""
    request = urllib.request.Request(f"{url}/openapi.json", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        schema = json.load(answer)
    operations = sum(len(methods) for methods in schema["paths"].values())
    problems = []
    for page, pattern in RENDERED.items():
        dom = chromium(f"{url}{page}", "--dump-dom")
        rendered = len(re.findall(pattern, dom))
        print(f"{name} {page}: {rendered} of {operations} operations rendered")
        if rendered != operations:
            problems.append(f"{name} {page} rendered {rendered} operations, the schema has {operations}")
        if page == "/docs" and "OAS 3.1" not in dom:
            problems.append(f"{name} /docs does not show the schema's OpenAPI version 3.1")
        if page == "/docs" and headers and 'class="btn authorize' not in dom:
            problems.append(f"{name} /docs offers no Authorize button though the server asks for a token")
        screenshot = OUT / f"{name}{page.replace('/', '-')}.png"
        chromium(f"{url}{page}", "--window-size=1280,1600", f"--screenshot={screenshot.resolve()}")
        if not screenshot.is_file() or screenshot.stat().st_size < 10_000:
            problems.append(f"no screenshot of {name} {page} at {screenshot}")
    return problems


def main() -> int:
    if shutil.which("chromium") is None:
        print("chromium is not installed (make browser-check installs Debian's)", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    model = package(["h1", "tissue-seg"], OUT / "artifact", demo=True)
    token = "browser-check-token-0123456789"
    problems = []
    with serve_model(model) as server:
        problems += check(server.url, "open", {})
    with serve_model(model, {"AUTH_TOKENS": token, "AUTH_OPEN": "docs"}) as server:
        problems += check(server.url, "token", {"Authorization": f"Bearer {token}"})
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    print(f"browser check {'failed' if problems else 'passed'}; screenshots in {OUT}/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
