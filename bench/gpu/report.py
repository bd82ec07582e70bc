"""Gathers what bench/gpu/run.sh wrote into report.json and report.md: each step's exit status and time, the
kernel checks (doctor.json), the CUDA test counts (cuda_tests.xml) and the attention and sampling tables.

    python bench/gpu/report.py DIR [--dry-run]
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _tests(path: str) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def main(out: str, dry_run: bool = False) -> int:
    steps = []
    if os.path.exists(os.path.join(out, "steps.tsv")):
        with open(os.path.join(out, "steps.tsv")) as f:
            for line in f:
                name, rc, seconds = line.rstrip("\n").split("\t")
                steps.append({"step": name, "exit": int(rc), "seconds": int(seconds)})
    doctor = _load(os.path.join(out, "doctor.json"))
    report = {
        "steps": steps,
        "machine": doctor and {"cpu": doctor["cpu"], "gpus": doctor["gpus"], "versions": doctor["versions"]},
        "kernels": doctor and doctor["kernels"],
        "cuda_tests": _tests(os.path.join(out, "cuda_tests.xml")),
        "attention": (_load(os.path.join(out, "attention_cuda.json")) or {}).get("table"),
        "sampling": (_load(os.path.join(out, "sampling_cuda.json")) or {}).get("table"),
    }
    title = "# GPU run (dry run: each step's CPU stand-in, no GPU)" if dry_run else "# GPU run"
    report["dry_run"] = dry_run
    md = [title, "", "| step | exit | seconds |", "|---|---|---|"]
    md += [f"| {s['step']} | {s['exit']} | {s['seconds']} |" for s in steps]
    if report["kernels"]:
        md += ["", "| op | device | dtype | variant | verified | check ms |", "|---|---|---|---|---|---|"]
        md += [
            f"| {k['op']} | {k['device']} | {k['dtype']} | {k['variant']} | {'yes' if k['verified'] else 'NO: ' + k['error']} "
            f"| {k['check_ms']} |"
            for k in report["kernels"]
        ]
    if report["cuda_tests"]:
        t = report["cuda_tests"]
        md += [
            "",
            f"CUDA tests: {t['tests']} run, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped",
        ]
    for name in ("attention", "sampling"):
        if report[name]:
            md += ["", f"## {name}", "", "```", report[name], "```"]
    tmp = os.path.join(out, "report.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, os.path.join(out, "report.json"))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md[: 4 + len(steps)]))
    print(f"report: {os.path.join(out, 'report.md')}")
    return 0 if all(s["exit"] == 0 for s in steps) else 1


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--dry-run"]
    if len(args) != 1:
        print("usage: python bench/gpu/report.py DIR [--dry-run]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(args[0], dry_run="--dry-run" in sys.argv[1:]))
