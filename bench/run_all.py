"""Run every benchmark, each alone in its own process, then print one combined table.

Every ``bench/*.py`` except this file and helper modules (named ``_*``) is a
benchmark. They run one after another (never two at once, so they do not compete
for the machine), with this interpreter, from the project root; extra arguments
such as ``--quick`` are passed to each. Their output is streamed as it comes, and
the ``BENCH_JSON`` line each prints makes up the combined table.

Exits non-zero only when a benchmark crashed; a missed target is a verdict in the
table, not a failure.

    python bench/run_all.py [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import JSON_PREFIX, TABLE_HEADERS, format_table, table_rows

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent


def discover() -> list[Path]:
    return sorted(p for p in BENCH_DIR.glob("*.py")
                  if p.name != Path(__file__).name and not p.name.startswith("_"))


def run(script: Path, args: list[str]) -> tuple[int, list[dict], float]:
    """Run one benchmark, echoing its output; returns its exit status, the JSON
    summaries it printed and its wall time in seconds."""
    summaries = []
    started = time.perf_counter()
    # stderr joins stdout so that warnings and tracebacks appear where they happened.
    with subprocess.Popen([sys.executable, str(script), *args], cwd=PROJECT_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            if line.startswith(JSON_PREFIX):
                summaries.append(json.loads(line[len(JSON_PREFIX):]))
            else:
                print(line, end="", flush=True)
    return proc.returncode, summaries, time.perf_counter() - started


def main() -> int:
    args = sys.argv[1:]
    scripts = discover()
    rows: list[list[str]] = []
    notes: list[str] = []
    crashed: list[str] = []
    for script in scripts:
        print(f"=== {script.name} {' '.join(args)}".rstrip(), flush=True)
        status, summaries, seconds = run(script, args)
        print(f"=== {script.name}: exit {status} after {seconds:.0f} s\n", flush=True)
        if status != 0:
            crashed.append(f"{script.name} (exit {status})")
        elif not summaries:
            crashed.append(f"{script.name} (no {JSON_PREFIX.strip()} line)")
        for summary in summaries:
            rows += table_rows(summary["benchmark"], summary["rows"])
            notes += [f"{summary['benchmark']}: {n}" for n in summary.get("notes", [])]
    print("Combined results" + (" (--quick sizes)" if "--quick" in args else ""))
    if rows:
        print(format_table(TABLE_HEADERS, rows))
    for note in notes:
        print(f"note: {note}")
    if crashed:
        print("crashed: " + ", ".join(crashed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
