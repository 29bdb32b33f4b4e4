#!/usr/bin/env python3
"""One SMTP session with Python's smtplib, reporting every reply.

    smtp_session.py SPEC_JSON

SPEC: {"host", "port", "helo", "from", "rcpts": [...], "message_file"}.
Prints JSON: {"greeting", "ehlo", "mail", "rcpts": [...], "data", "error"},
each reply as "CODE text" (multi-line replies joined by newlines), or
null for a step not reached. DATA is sent when at least one recipient was
accepted.
"""

import json
import smtplib
import sys


def text(code, message):
    return "%d %s" % (code, message.decode("utf-8", "replace"))


def main():
    spec = json.loads(sys.argv[1])
    out = {"greeting": None, "ehlo": None, "mail": None, "rcpts": [], "data": None, "error": None}
    try:
        client = smtplib.SMTP(timeout=60)
        code, message = client.connect(spec["host"], spec["port"])
        out["greeting"] = text(code, message)
        if code != 220:
            raise SystemExit(print(json.dumps(out)))
        code, message = client.ehlo(spec.get("helo", "client.test"))
        out["ehlo"] = text(code, message)
        if code != 250:
            raise SystemExit(print(json.dumps(out)))
        code, message = client.mail(spec["from"])
        out["mail"] = text(code, message)
        accepted = 0
        if code == 250:
            for rcpt in spec["rcpts"]:
                code, message = client.rcpt(rcpt)
                out["rcpts"].append(text(code, message))
                accepted += code == 250
        if accepted:
            with open(spec["message_file"], "rb") as f:
                content = f.read()
            try:
                code, message = client.data(content)
                out["data"] = text(code, message)
            except smtplib.SMTPDataError as e:
                out["data"] = text(e.smtp_code, e.smtp_error)
        try:
            client.quit()
        except smtplib.SMTPServerDisconnected:
            pass
    except (smtplib.SMTPException, OSError) as e:
        out["error"] = repr(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
