"""Batching: leads per API request, and leads per hour within the vendors' published quotas.

For each preset below, the matching sandbox runs in a process of its own on
loopback (a quota that never binds: the engine paces itself by the preset's
own ``delivery.rate_limit``), and ``signal-engine run PRESET`` delivers N new,
consenting leads with distinct emails (``workloads.lead_events``) from a fresh
state directory. Every lead's outcome must be ``delivered``. The sandbox's
``GET /_sandbox/state`` lists the API requests it answered: token requests
(Outreach's refresh) are not among them, and are not counted.

- **leads per request** = N / API requests the destination received;
- **leads per hour within the quotas**: for each rate window the preset
  declares (``delivery.rate_limit`` and its ``windows``, read from the
  compiled preset), requests allowed per hour (``requests * 3600 /
  per_seconds``) times leads per request; the smallest over the windows.
  The preset's figures sit a little below the vendor's published ones (see
  ``VENDOR_QUOTAS``), so the figure is what the engine will deliver, not the
  vendor's ceiling; that ceiling is reported beside it.

No timing is measured: these are counts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_intake import REPO
from bench_worker import LISTENING, launch, sandbox_state, stop
from workloads import lead_events

from engine.compile.compiler import load_preset
from engine.language.model import RateLimitSpec

PRESETS = ("hubspot/contacts-batch", "hubspot/contacts", "outreach/lead-capture")

# The vendors' published quotas, as the presets' comments cite them, with where each figure is recorded.
VENDOR_QUOTAS: dict[str, dict[str, Any]] = {
    "hubspot": {
        "windows": [
            {"requests": 100, "per_seconds": 10, "note": "private app, Free/Starter (190 on Professional/Enterprise)"},
            {"requests": 250_000, "per_seconds": 86400, "note": "daily, Free/Starter (650,000 / 1,000,000 by tier)"},
        ],
        "source": "HubSpot's API usage guidelines, recorded in docs/vendors/hubspot.md ('Rate limits')",
    },
    "outreach": {
        "windows": [{"requests": 10_000, "per_seconds": 3600, "note": "per user, shared by every app acting as them"}],
        "source": "Outreach's API documentation (rate limiting), cited in presets/outreach/lead-capture.yaml",
    },
}


def windows(spec: RateLimitSpec) -> list[tuple[int, float]]:
    """The preset's rate windows: ``rate_limit`` itself and each of its ``windows``."""
    found = [(spec.requests, spec.per_seconds)]
    for extra in spec.windows:
        found += windows(extra)
    return found


def per_hour(wins: list[tuple[int, float]] | list[dict[str, Any]], leads_per_request: float) -> tuple[float, str]:
    """Leads per hour: the tightest window's requests per hour times leads per request; and that window.

    A daily window's figure is its hourly average: a day's budget may be spent faster, but not sustained.
    """
    pairs = [(w["requests"], w["per_seconds"]) if isinstance(w, dict) else w for w in wins]
    r, s = min(pairs, key=lambda pair: pair[0] / pair[1])
    return r * 3600 / s * leads_per_request, f"{r:,}/{s:g}s"


def start_sandbox(work: Path, vendor: str) -> tuple[subprocess.Popen[Any], str, Path]:
    """The vendor's sandbox with a quota that never binds, and settings pointing at it."""
    argv = [sys.executable, "-m", "engine", "sandbox", vendor, "--port", "0", "--quota", "100000000", "--window", "1"]
    if vendor == "hubspot":
        argv += ["--daily-quota", "100000000"]
    proc, match = launch(argv, work / f"{vendor}-sandbox.log", {}, LISTENING)
    url = f"http://{match.group(1)}:{match.group(2)}"
    settings = work / f"{vendor}-settings.yaml"
    if vendor == "hubspot":
        text = f"access_token: sandbox-private-app-token\nbase_url: {url}\n"
    else:
        text = (
            "client_id: sandbox-client\nclient_secret: sandbox-secret\n"
            f"refresh_token: sandbox-refresh-token\nbase_url: {url}\n"
        )
    settings.write_text(text, encoding="utf-8")
    return proc, url, settings


def measure(work: Path, preset: str, leads: int) -> dict[str, Any]:
    """Deliver ``leads`` new leads with ``preset``; count outcomes and the API requests received."""
    vendor = preset.split("/")[0]
    events = work / "leads.ndjson"
    events.write_text("".join(json.dumps(e) + "\n" for e in lead_events(leads)), encoding="utf-8")
    sandbox, url, settings = start_sandbox(work, vendor)
    try:
        state_dir = work / f"state-{preset.replace('/', '-')}"
        argv = [sys.executable, "-m", "engine", "run", preset, "--settings", str(settings), "--state", str(state_dir)]
        done = subprocess.run([*argv, "--events", str(events)], cwd=REPO, capture_output=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{preset}: run failed ({done.returncode}): {done.stderr.decode(errors='replace')[-800:]}")
        outcomes: dict[str, int] = {}
        for line in done.stdout.decode().splitlines():
            if line.strip():
                name = json.loads(line).get("outcome", "?")
                outcomes[name] = outcomes.get(name, 0) + 1
        if outcomes.get("delivered", 0) != leads:
            raise SystemExit(f"{preset}: {outcomes} for {leads} leads; every lead must be delivered")
        seen = sandbox_state(url)
    finally:
        stop(sandbox)
    requests = len(seen["statuses"])
    lpr = leads / requests
    preset_windows = windows(load_preset(preset).delivery.rate_limit)
    vendor_quota = VENDOR_QUOTAS[vendor]
    preset_hour, preset_binding = per_hour(preset_windows, lpr)
    vendor_hour, vendor_binding = per_hour(vendor_quota["windows"], lpr)
    return {
        "preset": preset,
        "leads": leads,
        "outcomes": outcomes,
        "api_requests": requests,
        "requests_by_status": seen["requests_by_status"],
        "leads_per_request": lpr,
        "preset_windows": [{"requests": r, "per_seconds": s} for r, s in preset_windows],
        "leads_per_hour_preset": preset_hour,
        "binding_window_preset": preset_binding,
        "vendor_windows": vendor_quota["windows"],
        "leads_per_hour_vendor": vendor_hour,
        "binding_window_vendor": vendor_binding,
        "vendor_source": vendor_quota["source"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=1000, help="new leads delivered per preset (default 1000)")
    parser.add_argument("--preset", action="append", choices=PRESETS, help="only this preset (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    results = []
    for preset in args.preset or PRESETS:
        with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
            results.append(measure(Path(tmp), preset, args.leads))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("API requests exclude token requests (Outreach's refresh); every lead's outcome was delivered.")
    print(
        "| preset | leads | API requests | leads/request | windows (preset) "
        "| leads/hour, preset's windows (binding) | leads/hour, vendor's published quota (binding) |"
    )
    print("|---|---:|---:|---:|---|---:|---:|")
    for r in results:
        wins = ", ".join(f"{w['requests']:,}/{w['per_seconds']:g}s" for w in r["preset_windows"])
        print(
            f"| {r['preset']} | {r['leads']:,} | {r['api_requests']:,} | {r['leads_per_request']:.2f} | {wins} "
            f"| {r['leads_per_hour_preset']:,.0f} ({r['binding_window_preset']}) "
            f"| {r['leads_per_hour_vendor']:,.0f} ({r['binding_window_vendor']}) |"
        )
    for vendor, quota in VENDOR_QUOTAS.items():
        wins = "; ".join(f"{w['requests']:,} per {w['per_seconds']:g} s ({w['note']})" for w in quota["windows"])
        print(f"{vendor}: {wins}. Source: {quota['source']}.")


if __name__ == "__main__":
    main()
