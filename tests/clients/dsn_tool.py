#!/usr/bin/env python3
"""Send a message with DSN parameters, and parse a DSN, with Python's
standard library (smtplib, email), for Empath's bounce system tests.

  dsn_tool.py send --host H --port P --from ADDR --to ADDR [--to ...]
              --file MSG [--mail-option RET=FULL ...] [--rcpt-option NOTIFY=NEVER ...]
      Prints {"ok": BOOL, "code": INT or null, "reply": TEXT}; exit 1 unless accepted.

  dsn_tool.py parse FILE
      Parses FILE (a DSN as received, CRLF line ends) with the email package
      and prints what it found as JSON:
        content_type, report_type, boundary, from, to, subject, auto_submitted,
        defects (of every part), parts (content types in order), human (text),
        per_message {field: value}, per_recipient [{field: value}],
        returned {content_type, headers {field: value}, body or null}.
      Field names are lower-cased; folded values are unfolded.
"""

import argparse
import email
import email.policy
import json
import re
import smtplib
import ssl
import sys


def unfold(value):
    return re.sub(r"\r?\n(?=[ \t])", "", str(value))


def fields(message):
    return {name.lower(): unfold(value) for name, value in message.items()}


def send(args):
    with open(args.file, "rb") as f:
        content = f.read()
    try:
        smtp = smtplib.SMTP(args.host, args.port, local_hostname="client.test", timeout=60)
        if args.starttls:
            # The test's server certificate is its own: encryption only.
            smtp.ehlo()
            smtp.starttls(context=ssl._create_unverified_context())
            smtp.ehlo()
        try:
            refused = smtp.sendmail(args.sender, args.to, content, args.mail_option, args.rcpt_option)
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
    except smtplib.SMTPRecipientsRefused as e:
        code, reply = next(iter(e.recipients.values()))
        return False, code, reply.decode("utf-8", "replace")
    except smtplib.SMTPResponseException as e:
        error = e.smtp_error
        return False, e.smtp_code, error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
    except (smtplib.SMTPException, OSError) as e:
        return False, None, "%s: %s" % (type(e).__name__, e)
    if refused:
        return False, None, "some recipients refused: %r" % (refused,)
    return True, 250, ""


def all_defects(message):
    found = []
    for part in message.walk():
        found.extend("%s: %s" % (part.get_content_type(), type(d).__name__) for d in part.defects)
    return found


def parse(path):
    with open(path, "rb") as f:
        raw = f.read()
    message = email.message_from_bytes(raw)
    result = {
        "content_type": message.get_content_type(),
        "report_type": message.get_param("report-type"),
        "boundary": message.get_boundary(),
        "from": unfold(message.get("From", "")),
        "to": unfold(message.get("To", "")),
        "subject": unfold(message.get("Subject", "")),
        "auto_submitted": message.get("Auto-Submitted"),
        "defects": all_defects(message),
        "parts": [],
        "human": None,
        "per_message": None,
        "per_recipient": [],
        "returned": None,
    }
    if not message.is_multipart():
        return result
    parts = message.get_payload()
    result["parts"] = [part.get_content_type() for part in parts]
    for part in parts:
        kind = part.get_content_type()
        if kind == "text/plain" and result["human"] is None:
            result["human"] = part.get_payload(decode=True).decode("utf-8", "replace")
        elif kind in ("message/delivery-status", "message/global-delivery-status"):
            # The email package parses each block of fields as a message.
            blocks = part.get_payload()
            if kind == "message/global-delivery-status":
                # RFC 6533's type is not one the email package knows (it
                # reads it as one message): its blocks of UTF-8 fields are
                # split here, and each parsed with the same header parser.
                text = part.as_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]
                text = text.decode("utf-8", "replace")
                blocks = [
                    email.message_from_string(block + "\n")
                    for block in text.split("\n\n")
                    if block.strip()
                ]
            if blocks:
                result["per_message"] = fields(blocks[0])
                result["per_recipient"] = [fields(block) for block in blocks[1:]]
        elif kind in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) else inner
            result["returned"] = {
                "content_type": kind,
                "headers": fields(inner),
                "body": inner.get_payload(decode=False) if not inner.is_multipart() else None,
            }
        elif kind in ("text/rfc822-headers", "message/global-headers"):
            payload = part.get_payload(decode=True) or b""
            headers = email.message_from_bytes(payload)
            result["returned"] = {
                "content_type": kind,
                "headers": fields(headers),
                "body": None,
            }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    send_parser = commands.add_parser("send")
    send_parser.add_argument("--host", required=True)
    send_parser.add_argument("--port", required=True, type=int)
    send_parser.add_argument("--from", dest="sender", required=True)
    send_parser.add_argument("--to", action="append", required=True)
    send_parser.add_argument("--file", required=True)
    send_parser.add_argument("--mail-option", action="append", default=[])
    send_parser.add_argument("--rcpt-option", action="append", default=[])
    send_parser.add_argument("--starttls", action="store_true")
    parse_parser = commands.add_parser("parse")
    parse_parser.add_argument("file")
    args = parser.parse_args()
    if args.command == "send":
        ok, code, reply = send(args)
        print(json.dumps({"ok": ok, "code": code, "reply": reply}))
        sys.exit(0 if ok else 1)
    print(json.dumps(parse(args.file)))


if __name__ == "__main__":
    main()
