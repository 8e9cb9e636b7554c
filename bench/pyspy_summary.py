"""Summarise py-spy's collapsed stacks (`py-spy record --format raw`, what `bench/run.py --py-spy`
writes to <workdir>/profiles/): where the operator's CPU goes, by package and by function.

    .venv/bin/python bench/pyspy_summary.py PROFILE.txt [--top 25]

"self" counts the samples whose innermost frame is in the function or package; "inclusive"
counts the samples with the function anywhere on the stack (each stack once).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def package(path: str) -> str:
    """`.../site-packages/kopf/_core/x.py` -> `kopf`; the stdlib -> `stdlib:<module>`."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/operator/helmfile_operator/" in path:
        rest = path.split("/operator/helmfile_operator/", 1)[1]
        return "helmfile_operator/" + rest.split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return "stdlib:" + rest.split("/", 1)[0].removesuffix(".py")
    return path or "?"


# What the operator was doing, by the frames on the stack (first rule that matches wins).
ACTIVITIES: list[tuple[str, tuple[str, ...]]] = [
    ("drift checks (kubernetes dynamic client, in threads)", ("DriftChecker._check",)),
    ("API calls (kubernetes client, in threads)", ("Kube._call.<locals>.call",)),
    (
        "helm processes (spawn, pipes, reaping)",
        ("HelmClient._execute", "_do_waitpid", "HelmClient."),
    ),
    ("watch handlers (handlers.py, in kopf)", ("release_event (", "state_event (")),
    ("kopf: event processing", ("process_resource_event",)),
    ("kopf: watch streams (TLS, JSON)", ("watching.py", "aiohttp", "sslproto")),
    ("reconcile_state (render, summary)", ("reconcile_state (",)),
    ("reconcile_release", ("reconcile_release (",)),
    ("metrics (/metrics scrape)", ("generate_latest",)),
]


def activity(frames: list[tuple[str, str]]) -> str:
    text = ";".join(f"{func} ({file})" for func, file in frames)
    for name, needles in ACTIVITIES:
        if any(needle in text for needle in needles):
            return name
    return "other (event loop, threads, logging)"


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame.strip())
            if match is None:
                frames.append((frame.strip(), ""))
            else:
                frames.append((match["func"], match["file"]))
        stacks.append((frames, int(count)))
    return stacks


def summarise(path: Path, top: int) -> str:
    stacks = parse(path)
    total = sum(count for _, count in stacks) or 1
    self_pkg: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    incl_pkg: Counter[str] = Counter()
    by_activity: Counter[str] = Counter()
    for frames, count in stacks:
        by_activity[activity(frames)] += count
        # py-spy puts the thread name first: skip frames without a file.
        real = [(f, p) for f, p in frames if p]
        if not real:
            continue
        func, file = real[-1]
        self_pkg[package(file)] += count
        self_fn[f"{func} ({package(file)})"] += count
        for name in {f"{f} ({package(p)})" for f, p in real}:
            incl_fn[name] += count
        for name in {package(p) for _, p in real}:
            incl_pkg[name] += count
    out = [f"{path.name}: {total} samples"]
    for title, counter in (
        ("by activity", by_activity),
        ("self, by package", self_pkg),
        ("inclusive, by package", incl_pkg),
        ("self, by function", self_fn),
        ("inclusive, by function", incl_fn),
    ):
        out.append(f"\n{title}:")
        out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("profiles", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for profile in args.profiles:
        print(summarise(profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
