"""Drive the demo page in headless Chromium: click Generate, wait for the images, save a PNG.

    python tools/screenshot.py --model runs/fm --out docs/demo.png
    python tools/screenshot.py --url http://127.0.0.1:7860 --out shot.png   # a running demo

Chromium (Debian's ``chromium``) is spoken to over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3
and 4), so no WebDriver or websocket package is needed. It starts with a new empty
``--user-data-dir`` and the flags that keep it off the network.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
]


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None (``HART_CHROMIUM`` overrides the search)."""
    env = os.environ.get("HART_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium with one page, driven over the DevTools pipe.

    Use as a context manager; :meth:`call` sends a command to the page and returns its result.
    """

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 1000, timeout: float = 30.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise FileNotFoundError("chromium not found (Debian: apt-get install chromium)")
        self.width, self.height, self.timeout = width, height, timeout
        self._next_id = 0
        self._buf = b""
        self.session = None

    def __enter__(self) -> "Chromium":
        self._profile = tempfile.TemporaryDirectory(prefix="hart-chromium-")
        to_child_r, self._to_child = os.pipe()  # we write commands, Chromium reads fd 3
        self._from_child, from_child_w = os.pipe()  # Chromium writes fd 4, we read

        def wire_fds():  # runs in the child before exec
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=wire_fds,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     session=False)["sessionId"]
            self.call("Page.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._send({"id": self._new_id(), "method": "Browser.close"})
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    # ------------------------------------------------------------------ protocol

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, msg: dict) -> None:
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self._to_child, data)
            data = data[n:]

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise CDPError("chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, *, session: bool = True, timeout: float | None = None):
        """Send one DevTools command (to the page unless ``session=False``) and return its result."""
        msg = {"id": self._new_id(), "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self._send(msg)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == msg["id"]:  # events and other replies are ignored
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    # ------------------------------------------------------------------ page helpers

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CDPError(f"javascript error: {d.get('exception', {}).get('description') or d.get('text')}"
                           f" in: {expression[:200]}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str = "the page"):
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def click(self, selector: str) -> None:
        """A real mouse click (press + release) at the centre of the element."""
        js = (f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
              " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
              " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        xy = self.wait_for(js, what=selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent",
                      {"type": kind, "x": xy[0], "y": xy[1], "button": "left", "clickCount": 1})

    def screenshot(self, path, full_page: bool = True) -> Path:
        params = {"format": "png"}
        if full_page:
            h = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": max(int(h), 200), "deviceScaleFactor": 1, "mobile": False})
            self.evaluate("window.scrollTo(0, 0)")
            time.sleep(0.3)  # let the layout settle at the new size
        data = base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


# number of gallery images loaded and decoded (0 until all of them are)
IMAGES_SHOWN = ("(() => { const ims = [...document.querySelectorAll('#gallery img')];"
                " return ims.every(i => i.complete && i.naturalWidth > 0) ? ims.length : 0; })()")
TIMING_TEXT = ("(() => { const t = document.querySelector('#timing textarea, #timing input');"
               " return t ? t.value : ''; })()")
STRIP_SHOWN = ("(() => { const i = document.querySelector('#strip img');"
               " return !!i && i.complete && i.naturalWidth > 0; })()")


def capture(url: str, out, *, class_name: str | None = None, seed: int | None = None,
            timeout: float = 60.0, width: int = 1280) -> dict:
    """Open the demo at ``url``, click Generate, wait for images, strip and time, save ``out``.

    Returns what the page showed: ``{"images": n, "timing": text}``.
    """
    with Chromium(width=width, height=900, timeout=timeout) as browser:
        browser.goto(url)
        browser.wait_for("!!document.querySelector('#generate')", timeout=timeout, what="the Generate button")
        if class_name is not None or seed is not None:
            _set_inputs(browser, class_name, seed, timeout)
        browser.click("#generate")
        browser.wait_for(f"{IMAGES_SHOWN} > 0 && {STRIP_SHOWN} && {TIMING_TEXT}.length > 0",
                         timeout=timeout, what="the generated images")
        time.sleep(0.5)  # images finish decoding
        info = {"images": browser.evaluate(IMAGES_SHOWN), "timing": browser.evaluate(TIMING_TEXT)}
        browser.screenshot(out)
    return info


def _set_inputs(browser: Chromium, class_name, seed, timeout) -> None:
    """Type a seed and pick a class the way a visitor would."""
    if seed is not None:
        browser.click("#seed input")
        browser.evaluate("document.querySelector('#seed input').select()")  # click() waited for it
        browser.call("Input.insertText", {"text": str(seed)})
    if class_name is not None:
        browser.click("#class input")
        browser.evaluate("document.querySelector('#class input').select()")
        browser.call("Input.insertText", {"text": class_name})
        option = (f"[...document.querySelectorAll('#class li, ul[role=listbox] li')]"
                  f".find(li => li.innerText.trim() === {json.dumps(class_name)})")
        browser.wait_for(f"!!{option}", timeout=timeout, what=f"the class option {class_name!r}")
        # gradio picks an option on mousedown (and closes the list), so press it once
        picked = (f"(() => {{ const o = {option}; if (!o) return false;"
                  " o.dispatchEvent(new MouseEvent('mousedown', {bubbles: true})); return true; })()")
        browser.wait_for(picked, timeout=timeout, what=f"picking {class_name!r}")
        browser.wait_for(f"document.querySelector('#class input').value === {json.dumps(class_name)}",
                         timeout=timeout, what=f"the class to read {class_name!r}")
    browser.evaluate("document.activeElement && document.activeElement.blur()")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv=None):
    from hart.common.errors import UserError, cli_entry

    @cli_entry
    def run(argv):
        p = argparse.ArgumentParser(prog="python tools/screenshot.py", description=__doc__.split("\n\n")[0])
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--model", metavar="DIR", help="start the demo on this model folder (in this process)")
        src.add_argument("--url", help="an already running demo")
        p.add_argument("--out", required=True, help="PNG to write")
        p.add_argument("--class", dest="class_name", default=None, help="class name to pick before generating")
        p.add_argument("--seed", type=int, default=None, help="seed to type before generating")
        p.add_argument("--width", type=int, default=1280, help="page width in pixels (default 1280)")
        args = p.parse_args(argv)
        if find_chromium() is None:
            raise UserError("chromium not found (Debian: apt-get install chromium)")
        if args.url:
            info = capture(args.url, args.out, class_name=args.class_name, seed=args.seed, width=args.width)
        else:
            from demo.app import build_demo, launch_options, load_pipeline

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
