"""Running programs as bounded subprocesses; what they are and what they print is the caller's.

- never a shell: the argv is handed to the OS as is;
- at most `max_concurrency` processes run at once, and at most `max_concurrency_per_tenant` of
  one tenant (a namespace), so that one tenant's slow commands (long `--wait` timeouts) cannot
  take every slot. A run first waits for its tenant's slot, holding nothing, then for a global
  one. Waiting for a slot does not count against a command's time limit;
- each process leads its own process group. On the time limit, and when the calling task is
  cancelled, the group gets SIGTERM (so the program can clean up), then SIGKILL after a grace
  period, and the process is awaited: none outlives its call;
- stdout and stderr are read while the process runs, keeping at most a bound of each in memory.
  The excess is read and dropped, so the process never blocks on a full pipe, and the result says
  which stream went over: the caller fails the command rather than reading cut output;
- a non-zero exit is a result, not an exception. `run` raises only `SpawnError` (the program
  cannot be started), `Fenced` (`may_start` said no) and `CancelledError`;
- `may_start` (leader election) is asked right before each process starts, and `kill_all` ends
  every running process group at once, when leadership is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TERM_GRACE_SECONDS = 10.0
# helm's JSON for a big release is several MiB; stderr only needs its error lines.
DEFAULT_MAX_STDOUT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_STDERR_BYTES = 1024 * 1024
_READ_CHUNK_BYTES = 64 * 1024
# After the process exits, how long its pipes may stay open before its output is given up.
_READER_DRAIN_SECONDS = 5.0

# (command, "success" | "error", seconds): called once per run, whatever its end.
OnFinish = Callable[[str, str, float], None]
# A task reading one output stream: the bytes kept, and whether more came.
_Reader = asyncio.Future[tuple[bytes, bool]]


class SpawnError(Exception):
    """The program could not be started (missing, not executable, ...)."""

    def __init__(self, program: str, reason: str) -> None:
        super().__init__(f"cannot run {program}: {reason}")
        self.program = program
        self.reason = reason


class Fenced(Exception):
    """`may_start` refused the run: this replica is no longer allowed to act (leadership)."""

    def __init__(self, program: str) -> None:
        super().__init__(f"{program} not started: this replica may not act (not the leader)")


@dataclass(frozen=True)
class RunResult:
    returncode: int  # -1 when it is unknown
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    duration: float  # seconds, from the start of the process (queueing excluded)
    timed_out: bool
    # The streams ("stdout", "stderr") that went over their bound; only a prefix of each is kept.
    exceeded: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Exited 0 in time with all of its output."""
        return self.returncode == 0 and not self.timed_out and not self.exceeded


@dataclass
class _TenantSlots:
    """One tenant's slots; kept while a run of the tenant holds or waits for one."""

    semaphore: asyncio.Semaphore
    users: int = 0  # runs holding or waiting for one
    holding: int = 0


class Runner:
    """Runs programs, at most `max_concurrency` at once and `max_concurrency_per_tenant` of one
    tenant (default: half of `max_concurrency`, at least one)."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        max_concurrency_per_tenant: int | None = None,
        term_grace_seconds: float = DEFAULT_TERM_GRACE_SECONDS,
        on_finish: OnFinish | None = None,
        max_stdout_bytes: int = DEFAULT_MAX_STDOUT_BYTES,
        max_stderr_bytes: int = DEFAULT_MAX_STDERR_BYTES,
        logger: logging.Logger | None = None,
        may_start: Callable[[], bool] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_concurrency_per_tenant is None:
            max_concurrency_per_tenant = max(1, max_concurrency // 2)
        if max_concurrency_per_tenant < 1:
            raise ValueError("max_concurrency_per_tenant must be at least 1")
        self.max_concurrency = max_concurrency
        self.max_concurrency_per_tenant = max_concurrency_per_tenant
        self.term_grace_seconds = term_grace_seconds
        self.on_finish = on_finish
        self.max_stdout_bytes = max_stdout_bytes
        self.max_stderr_bytes = max_stderr_bytes
        self.log = logger if logger is not None else logging.getLogger(__name__)
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._tenants: dict[str, _TenantSlots] = {}
        self._in_flight = 0
        self._queued = 0
        self.may_start = may_start
        self._running: set[asyncio.subprocess.Process] = set()

    @property
    def in_flight(self) -> int:
        """Processes running now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Runs waiting for a free slot (their tenant's or a global one)."""
        return self._queued

    def tenant_in_flight(self, tenant: str) -> int:
        """Runs of `tenant` holding its slots now (running, or about to get a global slot)."""
        slots = self._tenants.get(tenant)
        return 0 if slots is None else slots.holding

    async def run(
        self,
        command: str,
        argv: Sequence[str],
        *,
        limit: float,
        env: Mapping[str, str],
        stdin: bytes | None = None,
        shown: str | None = None,
        tenant: str | None = None,
        cwd: Path | None = None,
    ) -> RunResult:
        """Run `argv` (program first) in `cwd` with at most `limit` seconds once it has a slot.

        `command` names the run for the hook and the log; `shown` is the command line as logged
        (the caller scrubs it of secrets; default: `argv` quoted). `tenant` (None: none) bounds
        the runs of one tenant.
        """
        slots = self._slots()
        waiting = True
        self._queued += 1
        try:
            async with self._tenant_slot(tenant):  # waiting for it holds no global slot
                await slots.acquire()
                waiting = False
                self._queued -= 1
                try:
                    return await self._execute(command, argv, limit, env, stdin, shown, cwd)
                finally:
                    slots.release()
        finally:
            if waiting:  # cancelled while queued
                self._queued -= 1

    def _slots(self) -> asyncio.Semaphore:
        # A semaphore belongs to one event loop; tests (and restarts) run several in turn.
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._semaphore_loop = loop
            self._tenants = {}
        return self._semaphore

    @contextlib.asynccontextmanager
    async def _tenant_slot(self, tenant: str | None) -> AsyncIterator[None]:
        """Hold one of `tenant`'s slots (none: no bound)."""
        if tenant is None:
            yield
            return
        slots = self._tenants.get(tenant)
        if slots is None:
            slots = self._tenants[tenant] = _TenantSlots(
                asyncio.Semaphore(self.max_concurrency_per_tenant)
            )
        slots.users += 1
        try:
            async with slots.semaphore:
                slots.holding += 1
                try:
                    yield
                finally:
                    slots.holding -= 1
        finally:
            # Dropped with its last user: an entry per tenant with runs, not per tenant ever seen.
            slots.users -= 1
            if slots.users == 0 and self._tenants.get(tenant) is slots:
                del self._tenants[tenant]

    async def _execute(
        self,
        command: str,
        argv: Sequence[str],
        limit: float,
        env: Mapping[str, str],
        stdin: bytes | None,
        shown: str | None,
        cwd: Path | None,
    ) -> RunResult:
        started = time.monotonic()
        if self.may_start is not None and not self.may_start():
            raise Fenced(argv[0])
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
                start_new_session=True,  # its own process group: killed as a whole
            )
        except OSError as error:
            self._finished(command, "error", time.monotonic() - started)
            raise SpawnError(argv[0], error.strerror or str(error)) from None
        if process.stdout is None or process.stderr is None:  # pragma: no cover - PIPE above
            raise RuntimeError("the output pipes are missing")

        self._in_flight += 1
        self._running.add(process)
        outcome = "error"
        timed_out = False
        readers: tuple[_Reader, _Reader] = (
            asyncio.ensure_future(_read_bounded(process.stdout, self.max_stdout_bytes)),
            asyncio.ensure_future(_read_bounded(process.stderr, self.max_stderr_bytes)),
        )
        try:
            try:
                await asyncio.wait_for(_communicate(process, stdin), limit)
            except TimeoutError:
                timed_out = True
                await self._terminate(process)
            (stdout, stdout_over), (stderr, stderr_over) = await _drain(readers)
            returncode = process.returncode if process.returncode is not None else -1
            exceeded = tuple(
                name for name, over in (("stdout", stdout_over), ("stderr", stderr_over)) if over
            )
            if returncode == 0 and not timed_out and not exceeded:
                outcome = "success"
        except BaseException:
            # Cancelled (or broken): the process must not outlive the call. The termination is
            # shielded so that a second cancellation cannot leave it half done.
            for reader in readers:
                reader.cancel()
            kill = asyncio.ensure_future(self._terminate(process))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(kill)
            raise
        finally:
            self._in_flight -= 1
            self._running.discard(process)
            duration = time.monotonic() - started
            self.log.debug(
                "%s %s: %s (%s in %.2fs, exit %s)",
                Path(argv[0]).name,
                command,
                shlex.join(argv) if shown is None else shown,
                "timed out" if timed_out else outcome,
                duration,
                process.returncode,
            )
            self._finished(command, outcome, duration)
        return RunResult(returncode, stdout, stderr, duration, timed_out, exceeded)

    def kill_all(self) -> int:
        """SIGKILL every running process group now, without waiting (the caller is about to
        exit: leadership lost, no time for helm's own clean-up). Returns how many."""
        running = [process for process in self._running if process.returncode is None]
        for process in running:
            _signal(process, signal.SIGKILL)
        return len(running)

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM (the program may clean up: helm marks the release failed instead of leaving it
        pending), then SIGKILL after the grace period."""
        if process.returncode is not None:
            return
        _signal(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.term_grace_seconds)
            return
        except TimeoutError:
            pass
        _signal(process, signal.SIGKILL)
        await process.wait()

    def _finished(self, command: str, outcome: str, duration: float) -> None:
        if self.on_finish is None:
            return
        try:
            self.on_finish(command, outcome, duration)
        except Exception:
            self.log.exception("the on_finish hook failed")


async def _communicate(process: asyncio.subprocess.Process, stdin: bytes | None) -> None:
    """Feed `stdin` (if any), then wait for the exit."""
    if stdin is not None and process.stdin is not None:
        try:
            process.stdin.write(stdin)
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it exited early; its exit code and stderr tell why
        finally:
            process.stdin.close()
    await process.wait()


async def _read_bounded(stream: asyncio.StreamReader, bound: int) -> tuple[bytes, bool]:
    """All of `stream`, keeping its first `bound` bytes; True when more came (and was dropped)."""
    kept = bytearray()
    over = False
    while chunk := await stream.read(_READ_CHUNK_BYTES):
        room = bound - len(kept)
        if len(chunk) > room:
            kept += chunk[: max(room, 0)]
            over = True
        else:
            kept += chunk
    return bytes(kept), over


async def _drain(readers: tuple[_Reader, _Reader]) -> tuple[tuple[str, bool], tuple[str, bool]]:
    """Text and overflow flag of stdout and stderr; a pipe still open after a grace period (a
    grandchild holds it) gives ""."""
    done, pending = await asyncio.wait(readers, timeout=_READER_DRAIN_SECONDS)
    for reader in pending:
        reader.cancel()

    def text(reader: _Reader) -> tuple[str, bool]:
        if reader not in done or reader.cancelled() or reader.exception() is not None:
            return "", False
        data, over = reader.result()
        return data.decode("utf-8", "replace"), over

    return text(readers[0]), text(readers[1])


def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if process.returncode is not None:
        return  # reaped: its pid (and group id) may belong to someone else now
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
