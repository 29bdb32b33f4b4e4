#!/usr/bin/env python3
"""Helpers for bench/run.sh that smtp-source and smtp-sink do not cover.

send: N messages with several recipients over several domains each
      (smtp-source gives every recipient of a message the same domain), from
      S concurrent sessions, with PIPELINING when the server offers it.
wait: until each smtp-sink (run with -c, its counter output in a file) has
      counted at least its number of messages; prints the time (epoch
      seconds) when the last one got there.
count: the number of messages an smtp-sink -c output file shows.

Standard library only (asyncio), so that it runs wherever python3 does.
"""

import argparse
import asyncio
import os
import re
import sys
import time


class SmtpError(Exception):
    pass


async def read_reply(reader):
    """One (possibly multi-line) reply: (code, lines)."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpError("connection closed by the server")
        lines.append(line.rstrip(b"\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            break
    try:
        code = int(lines[-1][:3])
    except ValueError:
        raise SmtpError(f"malformed reply {lines[-1]!r}") from None
    return code, lines


def expect(code, lines, wanted, what):
    if code // 100 != wanted:
        raise SmtpError(f"{what}: {b' / '.join(lines).decode(errors='replace')}")


def message_body(size, index, recipients):
    """Headers plus about `size` bytes of body, CRLF lines, no leading dots."""
    head = (
        f"From: <bench@client.test>\r\n"
        f"To: {', '.join('<' + r + '>' for r in recipients[:3])}\r\n"
        f"Subject: bench {index}\r\n"
        f"Message-ID: <{index}.{os.getpid()}.{time.time_ns()}@client.test>\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        f"\r\n"
    ).encode()
    line = b"La de da de da " + b"x" * 61 + b"\r\n"  # 78 bytes, like smtp-source's
    body = line * (size // len(line)) + b"y" * (size % len(line)) + b"\r\n"
    return head + body + b".\r\n"


class Sender:
    def __init__(self, args):
        self.args = args
        self.remaining = args.count
        self.sent = 0
        domains = args.domains.split(",")
        # Recipient i goes to domain i mod len(domains): 10 over 3 is 4/3/3.
        self.recipients = [
            f"user{i}@{domains[i % len(domains)]}" for i in range(args.rcpts)
        ]
        self.envelope_head = b"MAIL FROM:<bench@client.test>\r\n" + b"".join(
            f"RCPT TO:<{r}>\r\n".encode() for r in self.recipients
        )

    def take(self):
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        return self.args.count - self.remaining

    async def open(self):
        reader, writer = await asyncio.open_connection(self.args.host, self.args.port)
        expect(*await read_reply(reader), 2, "greeting")
        writer.write(b"EHLO client.test\r\n")
        code, lines = await read_reply(reader)
        expect(code, lines, 2, "EHLO")
        pipelining = any(l[4:].upper().startswith(b"PIPELINING") for l in lines)
        return reader, writer, pipelining

    async def close(self, reader, writer):
        writer.write(b"QUIT\r\n")
        await writer.drain()
        code, lines = await read_reply(reader)
        expect(code, lines, 2, "QUIT")
        writer.close()
        await writer.wait_closed()

    async def transaction(self, reader, writer, pipelining, index):
        if pipelining:
            writer.write(self.envelope_head + b"DATA\r\n")
            expect(*await read_reply(reader), 2, "MAIL")
            for _ in self.recipients:
                expect(*await read_reply(reader), 2, "RCPT")
            expect(*await read_reply(reader), 3, "DATA")
        else:
            writer.write(b"MAIL FROM:<bench@client.test>\r\n")
            expect(*await read_reply(reader), 2, "MAIL")
            for r in self.recipients:
                writer.write(f"RCPT TO:<{r}>\r\n".encode())
                expect(*await read_reply(reader), 2, "RCPT")
            writer.write(b"DATA\r\n")
            expect(*await read_reply(reader), 3, "DATA")
        writer.write(message_body(self.args.size, index, self.recipients))
        expect(*await read_reply(reader), 2, "end of data")
        self.sent += 1

    async def session(self):
        conn = None
        while (index := self.take()) is not None:
            if conn is None:
                conn = await self.open()
            await self.transaction(*conn, index)
            if not self.args.reuse:
                await self.close(*conn[:2])
                conn = None
        if conn is not None:
            await self.close(*conn[:2])

    async def run(self):
        tasks = [asyncio.create_task(self.session()) for _ in range(self.args.sessions)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise


def sink_count(path):
    """The last `mesg=N` that smtp-sink -c wrote (it rewrites one line with \\r)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200))
            tail = f.read()
    except FileNotFoundError:
        return 0
    # Only a complete counter (followed by its \r) counts.
    found = re.findall(rb"mesg=(\d+)\r", tail)
    return int(found[-1]) if found else 0


def cmd_send(args):
    sender = Sender(args)
    try:
        asyncio.run(sender.run())
    except (SmtpError, OSError) as e:
        print(f"smtpbench send: {e} (after {sender.sent} messages)", file=sys.stderr)
        return 1
    return 0


def cmd_wait(args):
    targets = []
    for spec in args.sinks:
        path, _, count = spec.rpartition("=")
        if not path or not count.isdigit():
            print(f"smtpbench wait: expected FILE=COUNT, got {spec!r}", file=sys.stderr)
            return 2
        targets.append((path, int(count)))
    deadline = time.time() + args.timeout
    while True:
        counts = [sink_count(p) for p, _ in targets]
        if all(c >= n for c, (_, n) in zip(counts, targets)):
            print(f"{time.time():.3f}")
            return 0
        if time.time() >= deadline:
            have = ", ".join(f"{c}/{n}" for c, (_, n) in zip(counts, targets))
            print(f"smtpbench wait: timed out with {have} messages", file=sys.stderr)
            return 1
        time.sleep(args.interval)


def cmd_count(args):
    print(sum(sink_count(p) for p in args.files))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send", help="send messages with many recipients")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--sessions", type=int, default=10)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--size", type=int, default=5120)
    s.add_argument("--rcpts", type=int, default=10)
    s.add_argument("--domains", default="d1.test,d2.test,d3.test")
    s.add_argument("--reuse", action="store_true", help="many messages per session")
    s.set_defaults(func=cmd_send)
    w = sub.add_parser("wait", help="wait for smtp-sink -c counters")
    w.add_argument("sinks", nargs="+", metavar="FILE=COUNT")
    w.add_argument("--timeout", type=float, default=900)
    w.add_argument("--interval", type=float, default=0.01)
    w.set_defaults(func=cmd_wait)
    c = sub.add_parser("count", help="messages counted by smtp-sink -c files")
    c.add_argument("files", nargs="+")
    c.set_defaults(func=cmd_count)
    args = p.parse_args()
    if args.cmd == "send" and (args.sessions < 1 or args.count < 0 or args.rcpts < 1):
        p.error("--sessions and --rcpts must be at least 1, --count not negative")
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
