#!/usr/bin/env python3
"""A static HTTP origin with single-range support (python's http.server has none), for benchmarks.

usage: origin.py DIR ADDR PORT
"""
import os
import re
import shutil
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        m = RANGE.match(self.headers.get("Range", ""))
        start, end, status = 0, size - 1, 200
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start > end:
                self.send_error(416)
                return
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                buf = f.read(min(left, 64 * 1024))
                if not buf:
                    break
                self.wfile.write(buf)
                left -= len(buf)


if __name__ == "__main__":
    directory, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    handler = lambda *a, **kw: Handler(*a, directory=directory, **kw)  # noqa: E731
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((addr, port), handler).serve_forever()
