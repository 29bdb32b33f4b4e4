#!/usr/bin/env python3
"""Reads a TLS report as it was mailed (RFC 8460 section 5.3) with
Python's email package, and checks its JSON against RFC 8460's report
format (tests/fixtures/tlsrpt-rfc8460.schema.json) with jsonschema.

usage: tlsrpt_check.py MESSAGE SCHEMA
       tlsrpt_check.py --gzip BODY SCHEMA   (a report as POSTed: gzip'd JSON)
Prints JSON: {content_type, report_type, subject, report_domain,
submitter, attachment_type, filename, schema_errors [..], report {..}}.
"""

import datetime
import email
import email.policy
import gzip
import json
import sys

import jsonschema


def check(report, schema):
    validator = jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )
    errors = ["%s: %s" % ("/".join(map(str, e.path)), e.message) for e in validator.iter_errors(report)]
    # RFC 3339 date-times, whether or not jsonschema checks formats.
    for key in ("start-datetime", "end-datetime"):
        try:
            datetime.datetime.fromisoformat(report["date-range"][key].replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError) as error:
            errors.append("date-range/%s: %s" % (key, error))
    return errors


def main():
    if sys.argv[1] == "--gzip":
        with open(sys.argv[2], "rb") as f:
            report = json.loads(gzip.decompress(f.read()))
        with open(sys.argv[3]) as f:
            schema = json.load(f)
        print(json.dumps({"schema_errors": check(report, schema), "report": report}))
        return
    with open(sys.argv[1], "rb") as f:
        message = email.message_from_bytes(f.read(), policy=email.policy.default)
    with open(sys.argv[2]) as f:
        schema = json.load(f)
    result = {
        "content_type": message.get_content_type(),
        "report_type": message.get_param("report-type"),
        "subject": str(message.get("Subject", "")),
        "report_domain": str(message.get("TLS-Report-Domain", "")),
        "submitter": str(message.get("TLS-Report-Submitter", "")),
        "attachment_type": None,
        "filename": None,
        "schema_errors": [],
        "report": None,
    }
    for part in message.walk():
        if part.get_content_type() == "application/tlsrpt+gzip":
            result["attachment_type"] = part.get_content_type()
            result["filename"] = part.get_filename()
            report = json.loads(gzip.decompress(part.get_payload(decode=True)))
            result["report"] = report
            result["schema_errors"] = check(report, schema)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
