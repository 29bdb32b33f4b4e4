#!/usr/bin/env python3
"""An OTLP/HTTP metrics and traces receiver for the tests: the
collector's side of the protocol, decoded with the OpenTelemetry
project's own protobuf definitions (the `opentelemetry-proto` package).

usage: otlp_receiver.py PORT_FILE OUTPUT_FILE

Listens on 127.0.0.1 (an ephemeral port, written to PORT_FILE once
listening). Every POST is decoded as an ExportMetricsServiceRequest and
appended to OUTPUT_FILE as one JSON line:
{"path", "content_type", "authorization", "resource": {attr: value},
 "metrics": [{"name", "description", "kind", "monotonic", "temporality",
              "points": [{"attributes": {...}, "value" | "count", "sum",
                          "bucket_counts", "explicit_bounds",
                          "start", "time"}]}]}
A POST to a path ending in /v1/traces is decoded as an
ExportTraceServiceRequest instead:
{"path", "content_type", "authorization",
 "spans": [{"name", "trace_id", "span_id", "parent_span_id" (hex), "kind",
            "start", "end", "status": {"code", "message"},
            "attributes": {...}, "resource": {...}, "scope"}]}
A body that is not protobuf (or not that message) gets 400 and is logged
with "error"; anything but application/x-protobuf gets 415."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

TEMPORALITY = {
    metrics_pb2.AGGREGATION_TEMPORALITY_UNSPECIFIED: "unspecified",
    metrics_pb2.AGGREGATION_TEMPORALITY_DELTA: "delta",
    metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
}


def any_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(pairs):
    return {kv.key: any_value(kv.value) for kv in pairs}


def number(point):
    kind = point.WhichOneof("value")
    return {"attributes": attributes(point.attributes),
            "value": getattr(point, kind) if kind else None,
            "start": point.start_time_unix_nano,
            "time": point.time_unix_nano}


def histogram(point):
    return {"attributes": attributes(point.attributes),
            "count": point.count,
            "sum": point.sum,
            "bucket_counts": list(point.bucket_counts),
            "explicit_bounds": list(point.explicit_bounds),
            "start": point.start_time_unix_nano,
            "time": point.time_unix_nano}


def metric(m):
    kind = m.WhichOneof("data")
    entry = {"name": m.name, "description": m.description, "kind": kind}
    if kind == "sum":
        entry["monotonic"] = m.sum.is_monotonic
        entry["temporality"] = TEMPORALITY.get(m.sum.aggregation_temporality)
        entry["points"] = [number(p) for p in m.sum.data_points]
    elif kind == "gauge":
        entry["points"] = [number(p) for p in m.gauge.data_points]
    elif kind == "histogram":
        entry["temporality"] = TEMPORALITY.get(m.histogram.aggregation_temporality)
        entry["points"] = [histogram(p) for p in m.histogram.data_points]
    else:
        entry["points"] = []
    return entry


def span(s, resource, scope):
    return {"name": s.name,
            "trace_id": s.trace_id.hex(),
            "span_id": s.span_id.hex(),
            "parent_span_id": s.parent_span_id.hex(),
            "kind": trace_pb2.Span.SpanKind.Name(s.kind),
            "start": s.start_time_unix_nano,
            "end": s.end_time_unix_nano,
            "status": {"code": trace_pb2.Status.StatusCode.Name(s.status.code),
                       "message": s.status.message},
            "attributes": attributes(s.attributes),
            "resource": resource,
            "scope": scope}


class Receiver(BaseHTTPRequestHandler):
    output = None

    def log_message(self, *args):  # quiet: the test reads OUTPUT_FILE
        pass

    def record(self, entry):
        with open(self.output, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def answer(self, status, body=b"", content_type="application/x-protobuf"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        entry = {"path": self.path,
                 "content_type": self.headers.get("Content-Type"),
                 "authorization": self.headers.get("Authorization")}
        if entry["content_type"] != "application/x-protobuf":
            entry["error"] = "unsupported content type"
            self.record(entry)
            return self.answer(415, b"", "text/plain")
        if self.path.endswith("/v1/traces"):
            return self.traces(body, entry)
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as error:
            entry["error"] = f"not an ExportMetricsServiceRequest: {error}"
            self.record(entry)
            return self.answer(400, b"", "text/plain")
        entry["resource"] = {}
        entry["metrics"] = []
        for resource_metrics in request.resource_metrics:
            entry["resource"].update(attributes(resource_metrics.resource.attributes))
            for scope in resource_metrics.scope_metrics:
                entry["scope"] = scope.scope.name
                entry["metrics"].extend(metric(m) for m in scope.metrics)
        self.record(entry)
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        self.answer(200, response.SerializeToString())

    def traces(self, body, entry):
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as error:
            entry["error"] = f"not an ExportTraceServiceRequest: {error}"
            self.record(entry)
            return self.answer(400, b"", "text/plain")
        entry["spans"] = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope in resource_spans.scope_spans:
                entry["spans"].extend(span(s, resource, scope.scope.name)
                                      for s in scope.spans)
        self.record(entry)
        response = trace_service_pb2.ExportTraceServiceResponse()
        self.answer(200, response.SerializeToString())


def main() -> int:
    port_file, output = sys.argv[1], sys.argv[2]
    Receiver.output = output
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    with open(port_file + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
