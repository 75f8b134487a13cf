"""A static file server with HTTP range requests, as GDAL's /vsicurl/ asks for: ``python range_server.py DIR LOG``.

It runs in its own process: rasterio holds the GIL during some network reads,
so a server thread inside the test process would never get to answer.  It
prints its port, then appends the size of every range it sends to LOG.
"""

from __future__ import annotations

import re
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeHandler(SimpleHTTPRequestHandler):
    log_path: Path

    def do_GET(self) -> None:
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            super().do_GET()
            return
        data = path.read_bytes()
        start = int(match.group(1))
        end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data[start:end + 1])
        with self.log_path.open("a") as log:
            log.write(f"{end - start + 1}\n")

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    RangeHandler.log_path = Path(sys.argv[2])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=sys.argv[1]))
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()
