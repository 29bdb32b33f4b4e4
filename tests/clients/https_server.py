#!/usr/bin/env python3
"""A real HTTPS server for the MTA-STS and TLS-RPT tests (Python's
http.server and ssl, not our code).

GET serves ROOT/HOST/PATH, where HOST is the request's Host header (one
server plays mta-sts.DOMAIN for several domains); files ending in .txt are
text/plain. POST stores the body in ROOT/posted/N with its Content-Type in
ROOT/posted/N.type. Every request is logged to ROOT/requests.log as
"METHOD HOST PATH STATUS". Prints the port it listens on, then serves until
it is killed.

usage: https_server.py --cert CHAIN.pem --key KEY.pem --root DIR [--bind 127.0.0.1]
"""

import argparse
import http.server
import itertools
import os
import ssl
import sys

ARGS = None
COUNTER = itertools.count(1)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def host(self):
        return (self.headers.get("Host") or "").split(":")[0].lower()

    def note(self, status):
        with open(os.path.join(ARGS.root, "requests.log"), "a") as log:
            log.write("%s %s %s %d\n" % (self.command, self.host(), self.path, status))

    def do_GET(self):
        base = os.path.realpath(os.path.join(ARGS.root, self.host()))
        path = os.path.realpath(os.path.join(base, self.path.split("?")[0].lstrip("/")))
        if not path.startswith(base + os.sep) or not os.path.isfile(path):
            self.note(404)
            self.send_error(404)
            return
        with open(path, "rb") as f:
            body = f.read()
        kind = "text/plain" if path.endswith(".txt") else "application/octet-stream"
        self.note(200)
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        posted = os.path.join(ARGS.root, "posted")
        os.makedirs(posted, exist_ok=True)
        n = next(COUNTER)
        with open(os.path.join(posted, "%d.type" % n), "w") as f:
            f.write(self.headers.get("Content-Type") or "")
        with open(os.path.join(posted, str(n)), "wb") as f:
            f.write(body)
        self.note(200)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    ARGS = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ARGS.cert, ARGS.key)
    server = http.server.ThreadingHTTPServer((ARGS.bind, 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
