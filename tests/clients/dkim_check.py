#!/usr/bin/env python3
"""Verifies every DKIM signature of a message with dkimpy.

    dkim_check.py MESSAGE_FILE DNS_JSON

DNS_JSON maps TXT record names (such as "s1._domainkey.example.org") to
their text; dkimpy gets them through its dnsfunc hook instead of DNS.
Prints JSON: [{"domain", "selector", "algorithm", "verified"}, ...], one
entry per DKIM-Signature, top first.
"""

import json
import sys

import dkim


def main():
    with open(sys.argv[1], "rb") as f:
        message = f.read()
    records = json.loads(sys.argv[2])

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        text = records.get(name.rstrip("."))
        return text.encode() if text is not None else None

    checker = dkim.DKIM(message)
    results = []
    for index, (name, value) in enumerate(
        (n, v) for n, v in checker.headers if n.lower() == b"dkim-signature"
    ):
        tags = dkim.util.parse_tag_value(value)
        try:
            verified = checker.verify(idx=index, dnsfunc=dnsfunc)
        except dkim.DKIMException as e:
            verified = False
            print("signature %d: %s" % (index, e), file=sys.stderr)
        results.append(
            {
                "domain": tags.get(b"d", b"").decode(),
                "selector": tags.get(b"s", b"").decode(),
                "algorithm": tags.get(b"a", b"").decode(),
                "headers": tags.get(b"h", b"").decode(),
                "verified": bool(verified),
            }
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
