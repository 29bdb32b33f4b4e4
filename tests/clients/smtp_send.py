#!/usr/bin/env python3
"""Send .eml files with Python's smtplib, for Empath's system tests.

A real, independent SMTP client: each file's raw bytes go through
SMTP.sendmail() unchanged apart from dot-stuffing. Each thread opens one
connection and reuses it for many messages (reconnecting after an error).

Prints one JSON line per message:
    {"file": NAME, "ok": BOOL, "code": INT or null, "reply": TEXT}
and exits 1 if any message was not accepted (2 for usage errors).
Standard library only.
"""

import argparse
import json
import os
import smtplib
import sys
import threading


class RecordingSMTP(smtplib.SMTP):
    """smtplib.SMTP that keeps the reply to the end of DATA, which
    sendmail() does not return (it holds the server's queue ID)."""

    last_data_reply = None

    def data(self, msg):
        code, reply = super().data(msg)
        self.last_data_reply = (code, reply)
        return code, reply


def text(reply):
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return str(reply)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--from", dest="sender", required=True, help="envelope sender")
    parser.add_argument("--to", action="append", required=True, help="envelope recipient (repeatable)")
    parser.add_argument("--dir", required=True, help="directory of .eml files")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--helo", default="client.test", help="EHLO name (avoids a slow getfqdn())")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-operation socket timeout")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def eml_files(directory):
    names = sorted(n for n in os.listdir(directory) if n.endswith(".eml"))
    return [os.path.join(directory, n) for n in names]


class Sender:
    """One connection, reused for a sequence of messages."""

    def __init__(self, args):
        self.args = args
        self.smtp = None

    def connect(self):
        self.smtp = RecordingSMTP(
            self.args.host, self.args.port, local_hostname=self.args.helo, timeout=self.args.timeout
        )

    def drop(self):
        """Forget a connection in an unknown state; the next message reconnects."""
        if self.smtp is not None:
            try:
                self.smtp.close()
            except OSError:
                pass
        self.smtp = None

    def send(self, path):
        """Returns (ok, code, reply) for one file."""
        with open(path, "rb") as f:
            content = f.read()
        try:
            if self.smtp is None:
                self.connect()
            self.smtp.last_data_reply = None
            refused = self.smtp.sendmail(self.args.sender, self.args.to, content)
        except smtplib.SMTPRecipientsRefused as e:
            # Every recipient refused; sendmail() has already sent RSET.
            code, reply = next(iter(e.recipients.values()))
            return False, code, "all recipients refused: " + text(reply)
        except smtplib.SMTPResponseException as e:
            # SMTPSenderRefused, SMTPDataError, SMTPHeloError, ...: a reply we
            # can report. After a 421 smtplib has closed the connection, and
            # after others the session state is unclear, so start afresh.
            self.drop()
            return False, e.smtp_code, text(e.smtp_error)
        except (smtplib.SMTPException, OSError) as e:
            # Disconnected, timed out, refused connection, ...: no reply code.
            self.drop()
            return False, None, "%s: %s" % (type(e).__name__, e)
        if refused:
            details = "; ".join("%s: %d %s" % (rcpt, c, text(r)) for rcpt, (c, r) in refused.items())
            code = next(iter(refused.values()))[0]
            return False, code, "some recipients refused: " + details
        code, reply = self.smtp.last_data_reply or (None, "")
        return code == 250, code, text(reply)

    def close(self):
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self.drop()


def main():
    args = parse_args()
    files = eml_files(args.dir)
    output_lock = threading.Lock()
    failures = []

    def report(path, ok, code, reply):
        line = json.dumps({"file": os.path.basename(path), "ok": ok, "code": code, "reply": reply})
        with output_lock:
            print(line, flush=True)
            if not ok:
                failures.append(path)

    def worker(paths):
        sender = Sender(args)
        try:
            for path in paths:
                try:
                    result = sender.send(path)
                except Exception as e:  # a bug or unreadable file: report it, keep going
                    sender.drop()
                    result = (False, None, "%s: %s" % (type(e).__name__, e))
                report(path, *result)
        finally:
            sender.close()

    threads = [
        threading.Thread(target=worker, args=(files[i :: args.threads],), name="sender-%d" % i)
        for i in range(min(args.threads, len(files)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        print("%d of %d messages failed" % (len(failures), len(files)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
