"""The bounded subprocess runner, against tiny Python children (no helm)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helmfile_operator.helm.runner import Runner, SpawnError

ENV = {"PATH": os.environ["PATH"]}


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def runner(**kwargs: Any) -> Runner:
    kwargs.setdefault("max_concurrency", 2)
    kwargs.setdefault("term_grace_seconds", 0.5)
    return Runner(**kwargs)


async def test_a_failed_exit_is_a_result() -> None:
    seen: list[tuple[str, str, float]] = []
    run = runner(on_finish=lambda *a: seen.append(a))
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = await run.run("fail", python(code), limit=10, env=ENV)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert not result.timed_out
    assert result.exceeded == ()
    assert result.duration >= 0
    assert [(c, o) for c, o, _ in seen] == [("fail", "error")]


async def test_stdin_is_fed() -> None:
    code = "import sys; sys.stdout.write(sys.stdin.read().upper())"
    result = await runner().run("echo", python(code), limit=10, env=ENV, stdin=b"secret\n")
    assert result.ok
    assert result.stdout == "SECRET\n"


async def test_stdout_over_its_bound_fails_the_run() -> None:
    # Far more than a pipe buffer: the child must still run to its end, never block.
    code = "import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush(); sys.exit(0)"
    seen: list[tuple[str, str, float]] = []
    run = runner(max_stdout_bytes=1000, on_finish=lambda *a: seen.append(a))
    result = await run.run("big", python(code), limit=10, env=ENV)
    assert result.returncode == 0
    assert not result.timed_out
    assert result.exceeded == ("stdout",)
    assert not result.ok
    assert result.stdout == "x" * 1000  # a prefix, flagged: never mistaken for all of it
    assert seen[-1][:2] == ("big", "error")


async def test_stderr_over_its_bound_fails_the_run() -> None:
    code = "import sys; sys.stderr.write('e' * 5000); print('fine')"
    result = await runner(max_stderr_bytes=100).run("noisy", python(code), limit=10, env=ENV)
    assert result.exceeded == ("stderr",)
    assert result.stdout == "fine\n"
    assert len(result.stderr) == 100
    assert not result.ok


async def test_output_at_its_bound_is_whole() -> None:
    code = "import sys; sys.stdout.write('x' * 1000)"
    result = await runner(max_stdout_bytes=1000).run("exact", python(code), limit=10, env=ENV)
    assert result.ok
    assert result.stdout == "x" * 1000


async def test_time_limit() -> None:
    run = runner()
    result = await run.run("slow", python("import time; time.sleep(30)"), limit=0.3, env=ENV)
    assert result.timed_out
    assert result.returncode < 0  # killed by a signal
    assert not result.ok
    assert run.in_flight == 0


async def test_missing_program(tmp_path: Path) -> None:
    seen: list[tuple[str, str, float]] = []
    run = runner(on_finish=lambda *a: seen.append(a))
    with pytest.raises(SpawnError) as caught:
        await run.run("none", [str(tmp_path / "missing")], limit=1, env=ENV)
    assert caught.value.program == str(tmp_path / "missing")
    assert [(c, o) for c, o, _ in seen] == [("none", "error")]
    assert (run.in_flight, run.queued) == (0, 0)


async def test_a_failing_hook_does_not_fail_the_run() -> None:
    def hook(command: str, outcome: str, seconds: float) -> None:
        raise RuntimeError("broken metrics")

    result = await runner(on_finish=hook).run("ok", python("pass"), limit=10, env=ENV)
    assert result.ok


async def test_slots_and_counters() -> None:
    run = runner(max_concurrency=1)
    sleep = python("import time; time.sleep(0.5)")
    tasks = [asyncio.create_task(run.run(f"r{i}", sleep, limit=10, env=ENV)) for i in range(3)]
    deadline = time.monotonic() + 5
    while run.in_flight == 0:
        assert time.monotonic() < deadline, "the first run never started"
        await asyncio.sleep(0.01)
    assert (run.in_flight, run.queued) == (1, 2)
    results = await asyncio.gather(*tasks)
    assert all(r.ok for r in results)
    assert (run.in_flight, run.queued) == (0, 0)


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        Runner(max_concurrency=0)
