"""A webhook on the lab's internet side: where alerts sent through apprise's json:// arrive.

Each POST body is appended to a file as one line, prefixed by its arrival time, so tests
can check that an alert got out (over a paused link) and benchmarks can time it.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from meterguard.lab.lab import Lab

_SERVER = """\
import http.server, sys, time
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        with open(sys.argv[3], 'ab') as out:
            out.write(b'%.6f ' % time.time() + body.replace(b'\\n', b' ') + b'\\n')
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Hook)
server.timeout = 1
for _ in range(900):  # bounded: at most about 15 minutes
    server.handle_request()
"""


@dataclass
class Hook:
    url: str
    out: Path
    proc: subprocess.Popen[str]

    def posts(self) -> list[tuple[float, str]]:
        """(arrival time, body) of every POST so far."""
        try:
            lines = self.out.read_text().splitlines()
        except OSError:
            return []
        found = []
        for line in lines:
            stamp, _, body = line.partition(" ")
            found.append((float(stamp), body))
        return found


def start_hook(lab: Lab, out: Path, port: int = 8099) -> Hook:
    addr = lab.server_addr("wwan")
    argv = [sys.executable, "-c", _SERVER, addr, str(port), str(out)]
    proc = lab.popen(lab.ns_cmd("inet", argv))
    return Hook(f"json://{addr}:{port}/hook", out, proc)
