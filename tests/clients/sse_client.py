"""Reads a modhost job's Server-Sent Events with httpx and httpx-sse (PyPI),
as a Python client would, and prints what it got as one JSON object.

Usage:
  sse_client.py get URL [LAST_EVENT_ID]    follow GET URL (a job's events)
  sse_client.py post URL JSON_FORM         POST the form (one-call stream)

Output: {"events": [{"id", "event", "data"}...], "deltas": "<joined text>"}
The stream is read until the server ends it (after `done` or `error`).
"""
import json
import sys

import httpx
from httpx_sse import connect_sse


def main() -> None:
    mode, url = sys.argv[1], sys.argv[2]
    headers = {}
    kwargs = {}
    if mode == "get" and len(sys.argv) > 3:
        headers["Last-Event-ID"] = sys.argv[3]
    if mode == "post":
        kwargs["data"] = json.loads(sys.argv[3])
    events = []
    deltas = []
    with httpx.Client(timeout=httpx.Timeout(60.0)) as client:
        with connect_sse(client, mode.upper(), url, headers=headers, **kwargs) as source:
            source.response.raise_for_status()
            for sse in source.iter_sse():
                # httpx-sse also yields the blank line after a comment ping
                # as an event without data; the spec says to skip it.
                if not sse.data:
                    continue
                data = json.loads(sse.data)
                events.append({"id": sse.id, "event": sse.event, "data": data})
                if sse.event == "delta":
                    deltas.append(data["text"])
    print(json.dumps({"events": events, "deltas": "".join(deltas)}))


if __name__ == "__main__":
    main()
