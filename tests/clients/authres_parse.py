#!/usr/bin/env python3
"""Parses an Authentication-Results header field with the authres package
(RFC 8601).

    authres_parse.py FIELD

FIELD is the whole field, "Authentication-Results: ...". Prints JSON:
{"authserv_id", "results": [{"method", "result", "properties": {...}}]}.
"""

import json
import sys

import authres


def main():
    header = authres.AuthenticationResultsHeader.parse(sys.argv[1])
    results = []
    for result in header.results:
        properties = {}
        for prop in result.properties:
            properties["%s.%s" % (prop.type, prop.name)] = prop.value
        results.append({"method": result.method, "result": result.result, "properties": properties})
    print(json.dumps({"authserv_id": header.authserv_id, "results": results}))


if __name__ == "__main__":
    main()
