#!/usr/bin/env python3
"""A milter for the system tests, speaking the Sendmail milter protocol
(version 6) directly over a socket, without libmilter.

    test_milter.py PLAN_JSON LOG_FILE

It listens on 127.0.0.1 on an ephemeral port, prints "PORT <n>" on its
first line of output, and serves each connection in a thread. Every event
it receives is appended to LOG_FILE as one JSON object per line (event,
macros, arguments), so that a test can check what the MTA sent.

The plan (JSON) says what to answer:
  "protocol": SMFIP_* flags to ask for in the negotiation (default 0)
  "macros": {"2": "{auth_authen} i", ...} macro lists per stage
  "replies": {"connect"|"helo"|"mail"|"rcpt:<addr>"|"data"|"eoh": REPLY}
  "eom": [ACTION, ...] modification requests sent at end of body
  "eom_reply": REPLY for the end of body (default "continue")
  "eom_sleep": seconds to wait before answering the end of body
  "eom_progress": send a progress packet every this many seconds while
                  sleeping
A REPLY is "continue", "accept", "reject", "tempfail", "discard", or
["reply", "550 5.7.1 text"]. An ACTION is one of
  ["addheader", name, value]       ["insheader", index, name, value]
  ["chgheader", index, name, value] (an empty value deletes)
  ["replbody", text]               ["addrcpt", address]
  ["addrcpt_par", address, params] ["delrcpt", address]
  ["chgfrom", address, params]     ["quarantine", reason]
"""

import json
import socket
import struct
import sys
import threading
import time

SMFIF_ALL = 0x1FF


def packet(code, data=b""):
    return struct.pack(">I", len(data) + 1) + code + data


def cstr(text):
    if isinstance(text, str):
        text = text.encode()
    return text + b"\0"


def strings(data):
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts = parts[:-1]
    return [p.decode("utf-8", "replace") for p in parts]


def read_exact(conn, size):
    out = b""
    while len(out) < size:
        chunk = conn.recv(size - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def reply_packet(reply):
    if isinstance(reply, list) and reply[0] == "reply":
        return packet(b"y", cstr(reply[1]))
    return packet(
        {
            "continue": b"c",
            "accept": b"a",
            "reject": b"r",
            "tempfail": b"t",
            "discard": b"d",
        }[reply]
    )


def action_packet(action):
    kind = action[0]
    if kind == "addheader":
        return packet(b"h", cstr(action[1]) + cstr(action[2]))
    if kind in ("insheader", "chgheader"):
        code = b"i" if kind == "insheader" else b"m"
        return packet(code, struct.pack(">I", action[1]) + cstr(action[2]) + cstr(action[3]))
    if kind == "replbody":
        return packet(b"b", action[1].encode())
    if kind == "addrcpt":
        return packet(b"+", cstr(action[1]))
    if kind == "addrcpt_par":
        return packet(b"2", cstr(action[1]) + cstr(action[2]))
    if kind == "delrcpt":
        return packet(b"-", cstr(action[1]))
    if kind == "chgfrom":
        params = cstr(action[2]) if len(action) > 2 and action[2] else b""
        return packet(b"e", cstr(action[1]) + params)
    if kind == "quarantine":
        return packet(b"q", cstr(action[1]))
    raise ValueError(kind)


class Session:
    def __init__(self, conn, plan, log, lock):
        self.conn = conn
        self.plan = plan
        self.log = log
        self.lock = lock
        self.macros = {}
        self.protocol = plan.get("protocol", 0)

    def record(self, event, **fields):
        entry = {"event": event, "macros": dict(self.macros)}
        entry.update(fields)
        with self.lock:
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def send(self, data):
        self.conn.sendall(data)

    def reply(self, key, no_reply_flag):
        if self.protocol & no_reply_flag:
            return
        self.send(reply_packet(self.plan.get("replies", {}).get(key, "continue")))

    def serve(self):
        while True:
            length = struct.unpack(">I", read_exact(self.conn, 4))[0]
            body = read_exact(self.conn, length)
            code, data = body[:1], body[1:]
            if code == b"O":
                version, actions, offered = struct.unpack(">III", data[:12])
                self.record("negotiate", version=version, actions=actions, offered=offered)
                lists = b""
                for stage, names in self.plan.get("macros", {}).items():
                    lists += struct.pack(">I", int(stage)) + cstr(names)
                self.send(packet(b"O", struct.pack(">III", 6, SMFIF_ALL, self.protocol) + lists))
            elif code == b"D":
                names = strings(data[1:])
                self.macros.update(dict(zip(names[0::2], names[1::2])))
            elif code == b"C":
                hostname, rest = data.split(b"\0", 1)
                family = rest[:1].decode()
                port = struct.unpack(">H", rest[1:3])[0] if family != "U" else 0
                address = strings(rest[3:])[0] if family != "U" else ""
                self.record("connect", hostname=hostname.decode(), family=family, port=port, address=address)
                self.reply("connect", 1 << 12)
            elif code == b"H":
                self.record("helo", name=strings(data)[0])
                self.reply("helo", 1 << 13)
            elif code == b"M":
                self.record("mail", args=strings(data))
                self.reply("mail", 1 << 14)
            elif code == b"R":
                args = strings(data)
                self.record("rcpt", args=args)
                self.reply("rcpt:" + args[0], 1 << 15)
            elif code == b"T":
                self.record("data")
                self.reply("data", 1 << 16)
            elif code == b"L":
                name, value = strings(data)[:2] + [""] * (2 - len(strings(data)[:2]))
                self.record("header", name=name, value=value)
                self.reply("header", 1 << 7)
            elif code == b"N":
                self.record("eoh")
                self.reply("eoh", 1 << 18)
            elif code == b"B":
                self.record("body", size=len(data), text=data.decode("utf-8", "replace"))
                self.reply("body", 1 << 19)
            elif code == b"E":
                self.record("eom")
                self.end_of_message()
                self.macros = {k: v for k, v in self.macros.items() if k in ("j", "_", "{client_addr}")}
            elif code == b"A":
                self.record("abort")
            elif code in (b"Q", b"K"):
                self.record("quit")
                return
            else:
                self.record("unknown", code=code.decode("latin-1"))

    def end_of_message(self):
        pause = self.plan.get("eom_sleep", 0)
        step = self.plan.get("eom_progress")
        deadline = time.time() + pause
        while time.time() < deadline:
            time.sleep(min(step or pause, max(0.0, deadline - time.time())))
            if step:
                self.send(packet(b"p"))
        for action in self.plan.get("eom", []):
            self.send(action_packet(action))
        self.send(reply_packet(self.plan.get("eom_reply", "continue")))


def main():
    plan = json.loads(sys.argv[1])
    log = sys.argv[2]
    lock = threading.Lock()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    print("PORT %d" % server.getsockname()[1], flush=True)

    def handle(conn):
        try:
            Session(conn, plan, log, lock).serve()
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
