"""The raw floor: `helm upgrade --install` for every release, C at a time, nothing else.

    python bench/raw_floor.py PLAN.json

PLAN.json: {"helm": path, "concurrency": C, "commands": [[argv...], ...]}. Run as a process of its
own so that the harness reads its CPU (and that of the helm processes it waited for) with wait4.
Exits 1 when any helm failed (after printing the first error).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _run(argv: list[str]) -> tuple[int, str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    return result.returncode, result.stderr


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text())
    helm = str(plan["helm"])
    commands: list[list[str]] = [[helm, *command] for command in plan["commands"]]
    with ThreadPoolExecutor(max_workers=int(plan["concurrency"])) as pool:
        results = list(pool.map(_run, commands))
    failed = [(code, err) for code, err in results if code != 0]
    if failed:
        print(
            f"{len(failed)} helm command(s) failed; first: {failed[0][1].strip()}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
