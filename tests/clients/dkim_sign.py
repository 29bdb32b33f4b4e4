#!/usr/bin/env python3
"""Signs a message with dkimpy, as another domain's mail server would.

    dkim_sign.py MESSAGE_FILE DOMAIN SELECTOR KEY_FILE

Prints the signed message (the DKIM-Signature field on top) to stdout.
"""

import sys

import dkim


def main():
    with open(sys.argv[1], "rb") as f:
        message = f.read()
    with open(sys.argv[4], "rb") as f:
        key = f.read()
    signature = dkim.sign(
        message,
        sys.argv[3].encode(),
        sys.argv[2].encode(),
        key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    sys.stdout.buffer.write(signature + message)


if __name__ == "__main__":
    main()
