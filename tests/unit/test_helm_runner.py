"""The bounded subprocess runner, against tiny Python children (no helm)."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helmfile_operator.helm.runner import Fenced, Runner, SpawnError

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


# --- per-tenant slots -----------------------------------------------------------------------------


async def wait_for(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_tenant_at_its_cap_does_not_block_another() -> None:
    # Three global slots, two per tenant: tenant a's third and fourth runs wait for a slot of
    # their own without holding a global one, so tenant b starts at once.
    run = runner(max_concurrency=3, max_concurrency_per_tenant=2)
    slow = python("import time; time.sleep(30)")
    a = [
        asyncio.create_task(run.run(f"a{i}", slow, limit=60, env=ENV, tenant="a")) for i in range(4)
    ]
    await wait_for(lambda: run.in_flight == 2 and run.queued == 2)
    assert run.tenant_in_flight("a") == 2
    quick = python("print('b ran')")
    result = await asyncio.wait_for(run.run("b", quick, limit=10, env=ENV, tenant="b"), 10)
    assert result.ok and result.stdout == "b ran\n"
    assert (run.in_flight, run.queued, run.tenant_in_flight("a")) == (2, 2, 2)
    for task in a:
        task.cancel()
    await asyncio.gather(*a, return_exceptions=True)
    assert (run.in_flight, run.queued, run.tenant_in_flight("a")) == (0, 0, 0)


async def test_a_tenant_never_runs_more_than_its_share() -> None:
    run = runner(max_concurrency=4, max_concurrency_per_tenant=1)
    code = "import time; print(time.time()); time.sleep(0.3); print(time.time())"
    results = await asyncio.gather(
        *(run.run(f"a{i}", python(code), limit=10, env=ENV, tenant="a") for i in range(3))
    )
    spans = sorted(tuple(map(float, r.stdout.split())) for r in results)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


async def test_without_a_tenant_only_the_global_bound_applies() -> None:
    run = runner(max_concurrency=2, max_concurrency_per_tenant=1)
    sleep = python("import time; time.sleep(0.5)")
    tasks = [asyncio.create_task(run.run(f"r{i}", sleep, limit=10, env=ENV)) for i in range(2)]
    await wait_for(lambda: run.in_flight == 2)
    await asyncio.gather(*tasks)


async def test_cancelled_while_waiting_for_the_tenant_slot() -> None:
    run = runner(max_concurrency=2, max_concurrency_per_tenant=1)
    slow = python("import time; time.sleep(30)")
    first = asyncio.create_task(run.run("a0", slow, limit=60, env=ENV, tenant="a"))
    await wait_for(lambda: run.in_flight == 1)
    second = asyncio.create_task(run.run("a1", slow, limit=60, env=ENV, tenant="a"))
    await wait_for(lambda: run.queued == 1)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert (run.in_flight, run.queued, run.tenant_in_flight("a")) == (1, 0, 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (run.in_flight, run.queued, run.tenant_in_flight("a")) == (0, 0, 0)


async def test_runs_in_the_given_directory(tmp_path: Path) -> None:
    result = await runner().run(
        "pwd", python("import os; print(os.getcwd())"), limit=10, env=ENV, cwd=tmp_path
    )
    assert result.stdout.strip() == str(tmp_path)


def test_per_tenant_slots() -> None:
    assert Runner(max_concurrency=8).max_concurrency_per_tenant == 4
    assert Runner(max_concurrency=1).max_concurrency_per_tenant == 1
    with pytest.raises(ValueError, match="max_concurrency_per_tenant"):
        Runner(max_concurrency=2, max_concurrency_per_tenant=0)


async def test_a_closed_gate_starts_no_process(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    allowed = [True]
    run = runner(may_start=lambda: allowed[0])
    code = f"open({str(marker)!r}, 'w').close()"
    assert (await run.run("touch", python(code), limit=10, env=ENV)).ok
    marker.unlink()
    allowed[0] = False  # leadership lost
    with pytest.raises(Fenced):
        await run.run("touch", python(code), limit=10, env=ENV)
    assert not marker.exists()
    assert run.in_flight == 0


async def test_kill_all_ends_every_running_process_at_once() -> None:
    run = runner(term_grace_seconds=60)  # SIGKILL, not the SIGTERM grace
    tasks = [
        asyncio.create_task(
            run.run("sleep", python("import time; time.sleep(60)"), limit=120, env=ENV)
        )
        for _ in range(2)
    ]
    async with asyncio.timeout(10):
        while run.in_flight < 2:  # noqa: ASYNC110 - waiting for the children to start
            await asyncio.sleep(0.01)
    started = time.monotonic()
    assert run.kill_all() == 2
    results = await asyncio.gather(*tasks)
    assert time.monotonic() - started < 5
    assert [r.returncode for r in results] == [-9, -9]
    assert run.kill_all() == 0
