"""The console's record, counted in instructions: a delivered lead with the record over one with ``--no-record``.

CPU time per lead moves by 0.1 to 0.2x between repetitions on a shared
machine (the sandbox shares the cores), more than a change to the record
costs, so this counts instructions instead, with valgrind's callgrind.
``signal-engine run outreach/lead-capture`` delivers ``--leads`` distinct
leads (``bench_delivery.lead``) to a fresh Outreach sandbox, with the record
and with ``--no-record``, and the same two commands run on an empty file
(startup); each figure is (leads - empty) / leads.

Not deterministic to better than about 1 %: the record's flush runs on a
quarter-second wall-clock timer, so under valgrind a batch holds 16-22
entries instead of 512, and how many depends on the machine's load. Run
nothing else heavy beside it, and ``--repeat`` for the spread. Several
minutes per repetition and checkout.

    .venv/bin/python benchmarks/bench_record_instructions.py --leads 300 --repeat 2 --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_delivery as b  # noqa: E402


def count(checkout: Path, leads: int, folder: Path) -> dict[str, int]:
    """Instructions of the four commands, from ``checkout`` (its own .venv when it has one)."""
    python = checkout / ".venv" / "bin" / "python"
    python = python if python.exists() else Path(sys.executable)
    events = {"leads": folder / "leads.ndjson", "empty": folder / "empty.ndjson"}
    events["leads"].write_text("".join(json.dumps(b.lead(i)) + "\n" for i in range(leads)))
    events["empty"].write_text("")
    out = {}
    for n, kind in enumerate(("leads", "leads-off", "empty", "empty-off")):
        name = kind.split("-")[0]
        proc, base = b.start_sandbox(1_000_000, 3600, "clock") if name == "leads" else (None, "http://127.0.0.1:9")
        settings = b.write_settings(folder / f"s{n}.yaml", base)
        profile = folder / f"cg{n}.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={profile}",
            *b.run_command(
                python,
                settings,
                folder / f"state{n}",
                events[name],
                *(["--no-record"] if kind.endswith("-off") else []),
            ),
        ]
        try:
            subprocess.run(
                command,
                cwd=checkout,
                env={**os.environ, "PYTHONPATH": str(checkout)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait()
        if name == "leads" and b._delivered(folder / f"state{n}") != leads:
            raise SystemExit(f"{checkout}: not every lead was delivered")
        found = re.search(r"^summary: (\d+)", profile.read_text(), re.M)
        if found is None:
            raise SystemExit(f"{profile}: no summary line")
        out[kind] = int(found.group(1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=300, help="leads delivered (default 300)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions (default 1)")
    parser.add_argument("--baseline", type=Path, help="another checkout, run alternating with this one")
    parser.add_argument("--keep", type=Path, help="keep the callgrind profiles in this folder")
    args = parser.parse_args()
    checkouts = [REPO] + ([args.baseline.resolve()] if args.baseline else [])
    for repetition in range(args.repeat):
        for checkout in checkouts:
            folder = args.keep / f"{checkout.name}-{repetition}" if args.keep else Path(tempfile.mkdtemp())
            folder.mkdir(parents=True, exist_ok=True)
            counts = count(checkout, args.leads, folder)
            on = (counts["leads"] - counts["empty"]) / args.leads
            off = (counts["leads-off"] - counts["empty-off"]) / args.leads
            print(
                f"{checkout}: per lead {on / 1e3:,.0f}k with the record, {off / 1e3:,.0f}k with --no-record: "
                f"{on / off:.4f}x (+{(on - off) / 1e3:,.0f}k)",
                flush=True,
            )


if __name__ == "__main__":
    main()
