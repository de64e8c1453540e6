"""Headless Chromium over the hub's TLS listener, run by test_tls.py as a child process.

``python browser_tls.py BASE_URL SPKI_SHA256_BASE64 ARTIFACTS_DIR NAME``: trusts exactly the
test certificate (``--ignore-certificate-errors-spki-list``, so the handshake and ALPN are
Chromium's own), signs up through the page, loads the sign-in page, opens a conat WebSocket
(wss) with the session cookie and prints one JSON object with what it saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from browser_flow import ARGS, CHROMIUM, TIMEOUT_MS  # the same browser set-up (this directory is on sys.path)
from playwright.sync_api import sync_playwright

# Engine.IO open, Socket.IO connect, then the broker's "info" event (who we are).
CONAT_PROBE = """async (url) => {
  const ws = new WebSocket(url);
  const frames = [];
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => resolve({frames, error: "timeout"}), 20000);
    ws.onerror = () => { clearTimeout(timer); resolve({frames, error: "websocket error"}); };
    ws.onmessage = (event) => {
      const text = typeof event.data === "string" ? event.data : "<binary>";
      frames.push(text);
      if (text.startsWith("0{")) ws.send("40");
      if (text.startsWith("42") && text.includes('"info"')) {
        clearTimeout(timer); ws.close(); resolve({frames, protocol: ws.protocol, url: ws.url});
      }
    };
  });
}"""


def main() -> int:
    base, spki, artifacts, name = sys.argv[1].rstrip("/"), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [*ARGS, f"--ignore-certificate-errors-spki-list={spki}"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args, timeout=TIMEOUT_MS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            signed_in = page.goto(base + "/auth/sign-in")
            assert signed_in is not None
            has_form = page.locator("form input[name=email]").count() > 0
            page.screenshot(path=str(artifacts / f"tls-{name}-sign-in.png"), full_page=True)
            navigation = page.evaluate("() => performance.getEntriesByType('navigation')[0].nextHopProtocol")
            page.goto(base + "/auth/sign-up")
            page.fill("input[name=email]", "tls@example.com")
            page.fill("input[name=password]", "correct horse battery")
            page.click("button[type=submit]")
            page.wait_for_url(base + "/")
            wss = "wss" + base[len("https"):] + "/conat/?EIO=4&transport=websocket"
            conat = page.evaluate(CONAT_PROBE, wss)
            print(json.dumps({"ok": True, "sign_in_status": signed_in.status, "sign_in_has_form": has_form,
                              "protocol": navigation, "conat": conat}), flush=True)
        except Exception as e:
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
            return 1
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
