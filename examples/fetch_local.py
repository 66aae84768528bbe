"""Fetch many URLs in parallel: I/O-bound work, where threads shine.

The script starts its own tiny HTTP server on 127.0.0.1 (a random free port)
that answers every request after a 50 ms delay, as a remote API would, then
fetches 120 pages from it with ``urllib``:

* ``parallax.plan`` explains why auto mode picks threads (the time is spent
  waiting, not computing);
* ``parallax.map(fetch, urls)`` in auto mode, and ``mode="thread",
  workers=16`` to cap concurrency (be polite to real servers);
* ``errors="return"`` keeps going when some URLs fail (404s here), putting
  the exception in the failed URL's place;
* ``parallax.monitor()`` records each run; the server is shut down at the end.

No network beyond loopback. Run it: ``python examples/fetch_local.py``.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import parallax

DELAY = 0.05
PAGES = 120


class SlowPages(BaseHTTPRequestHandler):
    """``/page/N`` answers ``page N`` after ``DELAY`` seconds; anything else is a 404."""

    def do_GET(self) -> None:
        time.sleep(DELAY)
        prefix = "/page/"
        if self.path.startswith(prefix) and self.path[len(prefix):].isdigit():
            body = f"page {self.path[len(prefix):]}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404, "no such page")

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the example's output readable


class Server(ThreadingHTTPServer):
    # The default listen backlog (5) is for a handful of clients: a burst of
    # 100+ connections would see dropped SYNs and 1 s TCP retransmits.
    request_queue_size = 256
    daemon_threads = True


def fetch(url: str) -> str:
    """Download ``url`` and return its text; HTTP errors raise ``HTTPError``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
        return text


def main() -> None:
    server = Server(("127.0.0.1", 0), SlowPages)
    serving = threading.Thread(target=server.serve_forever, name="example-http-server")
    serving.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = [f"{base}/page/{number}" for number in range(PAGES)]

        decision = parallax.plan(fetch, urls)
        print(f"plan: {decision.mode} ({decision.reason})")

        with parallax.monitor() as mon:
            started = time.perf_counter()
            pages = parallax.map(fetch, urls)
            auto_wall = time.perf_counter() - started
            assert pages == [f"page {number}" for number in range(PAGES)]

            capped = parallax.map(fetch, urls, mode="thread", workers=16)
            assert capped == pages

            # A few bad URLs: errors="return" puts each exception in its place.
            mixed = [*urls[:5], f"{base}/missing", *urls[5:8], f"{base}/nope"]
            outcomes = parallax.map(fetch, mixed, mode="thread", workers=8, errors="return")

        failed = [(url, outcome) for url, outcome in zip(mixed, outcomes, strict=True)
                  if isinstance(outcome, Exception)]
        assert [url for url, _ in failed] == [f"{base}/missing", f"{base}/nope"]
        assert all(isinstance(error, urllib.error.HTTPError) and error.code == 404
                   for _, error in failed)
        for _, error in failed:
            error.close()  # an HTTPError holds the response open

        print(f"auto: {PAGES} pages in {auto_wall:.2f} s as {mon.runs[0].mode!r} with "
              f"{mon.runs[0].workers} workers (one after another: at least "
              f"{PAGES * DELAY:.1f} s of server delay)")
        print(f"thread, workers=16: {mon.runs[1].wall_time:.2f} s "
              f"(at least {math.ceil(PAGES / 16) * DELAY:.2f} s: {PAGES} requests, 16 at a time)")
        print(f"errors='return': {len(outcomes) - len(failed)} pages, "
              f"{len(failed)} HTTPError 404s in place of {[url[len(base):] for url, _ in failed]}")
        print()
        print(mon.summary())
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)


if __name__ == "__main__":
    main()
