#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal, as an operator at a shell would,
answers its question, and reports what it printed.

usage: on_a_terminal.py PROMPT ANSWER -- COMMAND [ARGS...]

Waits (at most 20 s) until the command has printed PROMPT, types ANSWER
and Enter, reads the rest, and prints one JSON line:
{"status": exit status, "output": everything printed, "asked": bool}.
If the command ends without printing PROMPT, nothing is typed."""

import json
import os
import pty
import select
import subprocess
import sys
import time


def main() -> int:
    separator = sys.argv.index("--")
    prompt, answer = sys.argv[1], sys.argv[2]
    command = sys.argv[separator + 1:]
    controller, terminal = pty.openpty()
    child = subprocess.Popen(command, stdin=terminal, stdout=terminal,
                             stderr=terminal, close_fds=True)
    os.close(terminal)
    output = b""
    asked = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not asked and prompt.encode() in output:
                asked = True
                os.write(controller, answer.encode() + b"\n")
        elif child.poll() is not None:
            break
    try:
        status = child.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        child.kill()
        status = child.wait()
    os.close(controller)
    print(json.dumps({"status": status, "asked": asked,
                      "output": output.decode("utf-8", "replace")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
