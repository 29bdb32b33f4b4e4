#!/usr/bin/env python3
"""Reads an mbox file or a Maildir with Python's own `mailbox` module (a
reader we did not write) and prints one JSON object per message:
its From_ line (mbox), Return-Path, Delivered-To values, Subject, and body.

    read_mailbox.py mbox PATH
    read_mailbox.py maildir PATH
"""
import json
import mailbox
import sys


def main():
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "mbox":
        box = mailbox.mbox(path, create=False)
    else:
        box = mailbox.Maildir(path, factory=None, create=False)
    messages = []
    for message in box:
        payload = message.get_payload(decode=True) or b""
        messages.append({
            "from_line": message.get_from() if kind == "mbox" else None,
            "return_path": message.get("Return-Path"),
            "delivered_to": message.get_all("Delivered-To") or [],
            "subject": message.get("Subject"),
            "message_id": message.get("Message-ID"),
            "body": payload.decode("utf-8", "replace"),
        })
    print(json.dumps(messages))


if __name__ == "__main__":
    main()
