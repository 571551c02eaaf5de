#!/usr/bin/env python3
"""Reads the agent's final accounting from its log (stderr, in either --log-format): the one
`final accounting` line, whose `json` field holds every figure under the name it has in the
text accounting lines and the agent's own verdict on the accounting equation (`reconciled`,
and `imbalance` when it does not hold; the equation is `Accounting::reconcile` in
otel-agent/src/telemetry/accounting.rs and is not restated here).

  final_accounting.py json STDERR
      The JSON object, on one line.

  final_accounting.py pairs STDERR OUTPUT
      One line of name=value pairs: the session figures, the figures of the output named
      OUTPUT (`otlp`, `console`, `json`), and reconciled=1 or 0.

Exit status 0, or 2 when STDERR holds no final accounting line (or OUTPUT is not there).
"""

import json
import sys

LINE = "final accounting"


def read(path):
    """The JSON object of the last final accounting line of the log at PATH, or None."""
    found = None
    with open(path, errors="replace") as f:
        for line in f:
            if LINE in line and ("json=" in line or '"json":' in line):
                found = line
    if found is None:
        return None
    if found.startswith("{"):
        # --log-format json: the figures are the event's `json` field, as a string.
        return json.loads(json.loads(found)["json"])
    text = found.split(" json=", 1)[1]
    value, _ = json.JSONDecoder().raw_decode(text)
    return value


def output_figures(accounting, name):
    """The figures of the output NAME (without its `kind` and `output`), or None."""
    for output in accounting.get("outputs", []):
        if output.get("output") == name:
            return {k: v for k, v in output.items() if k not in ("kind", "output")}
    return None


def pairs(accounting, name):
    """The session figures, those of output NAME and the verdict, as name=value pairs."""
    figures = output_figures(accounting, name)
    if figures is None:
        return None
    merged = dict(accounting["session"])
    merged.update(figures)
    merged["reconciled"] = 1 if accounting.get("reconciled") else 0
    return " ".join(f"{key}={value}" for key, value in merged.items())


def main(argv):
    if len(argv) >= 3 and argv[1] in ("json", "pairs"):
        accounting = read(argv[2])
        if accounting is None:
            print(f"final_accounting.py: no '{LINE}' line in {argv[2]}", file=sys.stderr)
            return 2
        if argv[1] == "json" and len(argv) == 3:
            print(json.dumps(accounting, separators=(",", ":")))
            return 0
        if argv[1] == "pairs" and len(argv) == 4:
            line = pairs(accounting, argv[3])
            if line is None:
                print(f"final_accounting.py: no output {argv[3]} in {argv[2]}", file=sys.stderr)
                return 2
            print(line)
            return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
