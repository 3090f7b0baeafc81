"""Drive the demo page in headless Chromium: click Generate, wait for the images, save a PNG.

    python scripts/screenshot.py --model runs/fm --out docs/demo.png
    python scripts/screenshot.py --url http://127.0.0.1:7860 --out shot.png   # a running demo

A developer tool (not installed with the package). Chromium is driven with Selenium through
Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``;
``pip install selenium``); the driver is given by path, so Selenium never downloads one.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import time
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--hide-scrollbars", "--mute-audio",
]

# number of gallery images loaded and decoded (0 until all of them are)
IMAGES_SHOWN = ("const ims = [...document.querySelectorAll('#gallery img')];"
                " return ims.every(i => i.complete && i.naturalWidth > 0) ? ims.length : 0;")
TIMING_TEXT = "const t = document.querySelector('#timing textarea, #timing input'); return t ? t.value : '';"
STRIP_SHOWN = "const i = document.querySelector('#strip img'); return !!i && i.complete && i.naturalWidth > 0;"


def _which(env: str, names) -> str | None:
    path = os.environ.get(env)
    if path:
        return path if Path(path).exists() else None
    for name in names:
        found = shutil.which(name) or next((p for p in (f"/usr/lib/chromium/{name}", f"/usr/bin/{name}")
                                            if Path(p).exists()), None)
        if found:
            return found
    return None


def find_chromium() -> str | None:
    """Chromium's binary (``HART_CHROMIUM`` overrides), or None."""
    return _which("HART_CHROMIUM", ("chromium", "chromium-browser", "google-chrome"))


def find_driver() -> str | None:
    """chromedriver (``HART_CHROMEDRIVER`` overrides), or None."""
    return _which("HART_CHROMEDRIVER", ("chromedriver",))


def available() -> str | None:
    """None when a screenshot can be taken, else what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if find_chromium() is None or find_driver() is None:
        return "chromium or chromium-driver is missing (Debian: apt-get install chromium chromium-driver)"
    return None


def capture(url: str, out, *, class_name: str | None = None, seed: int | None = None,
            timeout: float = 60.0, width: int = 1280) -> dict:
    """Open the demo at ``url``, click Generate, wait for images, strip and time, save ``out``
    (the whole page). Returns what the page showed: ``{"images": n, "timing": text}``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = find_chromium()
    for flag in CHROMIUM_FLAGS + [f"--window-size={width},900"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=find_driver()), options=opts)
    try:
        wait = WebDriverWait(driver, timeout)
        driver.get(url)
        generate = wait.until(lambda d: d.find_element(By.ID, "generate"))
        if seed is not None:
            box = driver.find_element(By.CSS_SELECTOR, "#seed input")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(str(seed), Keys.TAB)
        if class_name is not None:
            box = driver.find_element(By.CSS_SELECTOR, "#class input")
            box.click()
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(class_name)
            wait.until(lambda d: any(li.text.strip() == class_name
                                     for li in d.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li")))
            box.send_keys(Keys.ENTER)
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#class input").get_attribute("value") == class_name)
        generate.click()
        wait.until(lambda d: d.execute_script(IMAGES_SHOWN) > 0 and d.execute_script(STRIP_SHOWN)
                   and len(d.execute_script(TIMING_TEXT)) > 0)
        time.sleep(0.5)  # images finish decoding
        info = {"images": driver.execute_script(IMAGES_SHOWN), "timing": driver.execute_script(TIMING_TEXT)}
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, max(900, int(height)))
        time.sleep(0.3)  # layout at the new size
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.quit()
    return info


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv=None):
    from hart.common.errors import UserError, cli_entry

    @cli_entry
    def run(argv):
        p = argparse.ArgumentParser(prog="python scripts/screenshot.py", description=__doc__.split("\n\n")[0])
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--model", metavar="DIR", help="start the demo on this model folder (in this process)")
        src.add_argument("--url", help="an already running demo")
        p.add_argument("--out", required=True, help="PNG to write")
        p.add_argument("--class", dest="class_name", default=None, help="class name to pick before generating")
        p.add_argument("--seed", type=int, default=None, help="seed to type before generating")
        p.add_argument("--width", type=int, default=1280, help="page width in pixels (default 1280)")
        args = p.parse_args(argv)
        missing = available()
        if missing:
            raise UserError(missing)
        if args.url:
            info = capture(args.url, args.out, class_name=args.class_name, seed=args.seed, width=args.width)
        else:
            from demo.app import build_demo, launch_options
            from demo.model import load_pipeline

            blocks = build_demo(load_pipeline(args.model))
            port = free_port()
            blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                          **launch_options())
            try:
                info = capture(f"http://127.0.0.1:{port}/", args.out, class_name=args.class_name, seed=args.seed,
                               width=args.width)
            finally:
                blocks.close()
        print(f"{args.out}: {info['images']} images, {info['timing']}")
        return 0

    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
