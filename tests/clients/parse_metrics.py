#!/usr/bin/env python3
"""Parses a Prometheus text exposition with the reference Python parser
(prometheus_client) and prints one JSON line per sample:
{"name": ..., "labels": {...}, "value": ...}. Exits 1 with the parser's
error if the text does not parse."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                print(json.dumps({
                    "family": family.name,
                    "type": family.type,
                    "name": sample.name,
                    "labels": sample.labels,
                    "value": sample.value,
                }))
    except Exception as error:  # the parser raises ValueError and others
        print(f"parse error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
