"""Retake docs/img/webui.png: the Train tab after loading sample_data/, in headless Chromium.

The app runs over a temporary folder holding a copy of sample_data/, and the data set field shows the
name a user would type ("sample_data"), not a path of the machine that took the picture.

    python scripts/screenshot_webui.py [--out docs/img/webui.png]

Needs Debian's chromium (/usr/bin/chromium) and playwright (in the dev extra); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def take(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    from sdlora_webui.app import build_app, launch
    from sdlora_webui.state import AppConfig, AppState

    with tempfile.TemporaryDirectory(prefix="sdlora-shot-") as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(REPO / "sample_data", data / "sample_data")
        state = AppState(AppConfig(lora_dir=Path(tmp) / "loras", output_dir=Path(tmp) / "outputs",
                                   data_dirs=(data,)))
        demo = build_app(state)
        _, url, _ = launch(demo, state, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(60_000)
                page.goto(url)
                box = page.locator("#train-data-path textarea, #train-data-path input[type=text]").first
                box.fill("sample_data")
                box.press("Enter")
                page.click("#train-load-data")
                page.get_by_text("32 images in").first.wait_for()
                page.wait_for_timeout(1000)  # let the caption gallery's thumbnails load
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out))
                browser.close()
        finally:
            demo.close()
            state.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "webui.png")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    take(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
