"""Run the function like `sam local invoke` / `sam local start-api`, without Docker.

Inside its container SAM runs a function under AWS's Lambda Runtime Interface Emulator (RIE).
That binary ships inside aws-sam-cli (samcli/local/rapid/aws-lambda-rie-<arch>), and with
awslambdaric, the official runtime interface client, it runs our handler on the host under the
real Lambda Runtime API: init, invoke, timeouts and REPORT lines as in Lambda. The function's
handler, timeout, memory and environment come from template.yaml through SAM's own providers,
and `serve` answers HTTP with SAM's own local API Gateway service (the code behind
`sam local start-api`), backed by a pool of warm emulators instead of containers.

    python scripts/local_lambda.py invoke --event events/predict.json
    python scripts/local_lambda.py serve --port 3000 --workers 2

`serve` runs asynchronous jobs and the model registry too: moto's server on loopback stands in for S3, DynamoDB
and SQS (the buckets, tables and queues the template declares), and each function with an SQS event (the job
worker, the finisher) gets its own warm environments fed by a poller, as Lambda's event source mapping does.
Presigned upload and result URLs point at that moto server, so curl and the client work unchanged. Every function
with API routes (the API's, the registry admin's, the explorer's) gets its own warm environments.

Where the emulator cannot run (not Linux, or no binary for this machine) the handler is called
in-process instead, with a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, Protocol, TextIO

import samcli
from samcli.lib.providers.api_provider import ApiProvider
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
from samcli.lib.utils.stream_writer import StreamWriter
from samcli.local.apigw.local_apigw_service import LocalApigwService

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts.local_jobs, run as a script

LOG = logging.getLogger("local_lambda")
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
# Variables the host must pass on: OpenBLAS needs OPENBLAS_CORETYPE on some CPUs to compute correctly.
PASS_THROUGH_PREFIXES = ("OPENBLAS_",)
REPORT_MAX_MEMORY = re.compile(rb"Max Memory Used: \d+ MB\t?")
# Stopping the server: how long its parts get to stop on SIGTERM before they are killed, all of them together.
STOP_TIMEOUT_S = 3.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOPPING_RESPONSE = {
    "statusCode": 503,
    "headers": {"Content-Type": "application/json", "Retry-After": "5"},
    "body": json.dumps({"error": "the local server is stopping", "details": []}),
}
# The id API Gateway would give the registry's admin key (`--admin-api-key`): requests carrying it get it as
# requestContext.identity.apiKeyId, and every function gets it as REGISTRY_ADMIN_KEY_ID, as the template sets it.
LOCAL_ADMIN_KEY_ID = "local-admin"
# The registry's variables: the template's values name resources that exist only once deployed.
REGISTRY_RESOURCE_VARIABLES = ("REGISTRY_BUCKET", "REGISTRY_TABLE", "TRAINING_QUEUE_URL")


class UsageError(Exception):
    """A mistake in the command line, said in one line."""


@dataclass(frozen=True)
class FunctionConfig:
    """What Lambda would know of the function, read from the template."""

    name: str
    handler: str
    code_dir: Path
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]


@dataclass(frozen=True)
class QueueEvent:
    """An SQS event source of a function: the queue's logical id in the template, and the batch size."""

    queue: str
    batch_size: int


def load_functions(
    template: Path, env_vars_file: Path | None = None
) -> tuple[dict[str, FunctionConfig], Any, Any, set[str]]:
    """Every Zip function of a SAM template (Globals applied), its API routes, its functions' SQS events, and the
    routes served without an API key (their event's `Auth: {ApiKeyRequired: false}`), as Flask names them."""
    # AWS::LanguageExtensions: the parameter-driven Fn::If resolved for the defaults, as CloudFormation does.
    stacks, _ = SamLocalStackProvider.get_stacks(str(template), language_extensions_enabled=True)
    overrides = json.loads(env_vars_file.read_text()) if env_vars_file else {}
    configs, queue_events = {}, {}
    keyless_paths: set[str] = set()
    for function in SamFunctionProvider(stacks).get_all():
        # Routes that override the API's ApiKeyRequired (the explorer's page), as Flask names them: /a/{b} -> /a/<b>
        keyless_paths |= {
            re.sub(r"\{([^}+]+)\}", r"<\1>", event["Properties"]["Path"])
            for event in (function.events or {}).values()
            if event.get("Type") == "Api" and (event["Properties"].get("Auth") or {}).get("ApiKeyRequired") is False
        }
        if function.packagetype != "Zip":
            continue
        environment = {k: str(v) for k, v in ((function.environment or {}).get("Variables") or {}).items()}
        for key in ("Parameters", function.name):  # sam's --env-vars format: all functions, then this one
            environment.update({k: str(v) for k, v in overrides.get(key, {}).items()})
        configs[function.name] = FunctionConfig(
            name=function.name,
            handler=function.handler,
            code_dir=(template.parent / (function.codeuri or ".")).resolve(),
            timeout_s=int(function.timeout or 3),
            memory_mb=int(function.memory or 128),
            environment=environment,
        )
        queue_events[function.name] = [
            QueueEvent(_logical_id(event["Properties"]["Queue"]), int(event["Properties"].get("BatchSize", 10)))
            for event in (function.events or {}).values()
            if event.get("Type") == "SQS"
        ]
    return configs, ApiProvider(stacks, cwd=str(template.parent)).api, queue_events, keyless_paths


def _logical_id(queue: Any) -> str:
    """The queue's logical id: SAM's local resolver turns `!GetAtt JobQueue.Arn` into a made-up ARN ending in it."""
    if isinstance(queue, dict) and "Fn::GetAtt" in queue:
        return str(queue["Fn::GetAtt"][0])
    return str(queue).rsplit(":", 1)[-1]


def load_function(
    template: Path, function_name: str | None = None, env_vars_file: Path | None = None
) -> tuple[FunctionConfig, Any]:
    """One function (by name; by default the one serving most of the API's routes) and the API routes."""
    configs, api, _, _ = load_functions(template, env_vars_file)
    if function_name is None:  # the API's function: the one serving most routes (not the explorer's page)
        counts = Counter(route.function_name for route in api.routes)
        most = max(counts.values(), default=0)
        names = [name for name in configs if counts[name] == most and most] or list(configs)
    else:
        names = [name for name in configs if name == function_name]
    if len(names) != 1:
        raise SystemExit(f"name one function of the template ({', '.join(configs)})")
    return configs[names[0]], api


def lambda_vcpus(memory_mb: int) -> int:
    """Lambda's vCPUs at this memory size: proportional to it, one at 1,769 MB, at most 6."""
    return max(1, min(6, memory_mb // 1769))


def lambda_environment(config: FunctionConfig) -> dict[str, str]:
    """The variables Lambda sets, then the template's; little is inherited from the host, as in a container."""
    region = os.environ.get("AWS_REGION", "us-east-1")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PYTHONPATH": str(config.code_dir),
        "LAMBDA_TASK_ROOT": str(config.code_dir),
        "_HANDLER": config.handler,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_LAMBDA_FUNCTION_NAME": config.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(config.timeout_s),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{config.name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local",
        # Like sam local: fake credentials, so nothing reaches a real account by accident, and the flag that
        # tells Powertools there is no X-Ray daemon to trace to.
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_SAM_LOCAL": "true",
        # Lambda gives one vCPU per 1,769 MB: BLAS gets as many threads as the function would have cores, not
        # the host's (on a shared machine, more threads per environment only fight each other)
        "OMP_NUM_THREADS": str(lambda_vcpus(config.memory_mb)),
        "OPENBLAS_NUM_THREADS": str(lambda_vcpus(config.memory_mb)),
        **{k: v for k, v in os.environ.items() if k.startswith(PASS_THROUGH_PREFIXES)},
        **config.environment,
    }


def emulator_binary() -> Path | None:
    """SAM's copy of the RIE for this machine, or None where it cannot run."""
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    if sys.platform != "linux" or arch is None:
        return None
    binary = Path(samcli.__file__).parent / "local" / "rapid" / f"aws-lambda-rie-{arch}"
    return binary if os.access(binary, os.X_OK) else None


class ExecutionEnvironment(Protocol):
    def invoke(self, event: bytes) -> bytes: ...
    def stop(self) -> None: ...
    def terminate(self) -> None: ...
    def wait(self, deadline: float) -> None: ...


class EmulatedEnvironment:
    """One Lambda execution environment: the RIE running our handler through awslambdaric.

    Like Lambda, the runtime starts (init) on the first invoke and then stays warm.
    """

    def __init__(self, config: FunctionConfig, binary: Path, log: TextIO) -> None:
        self.config = config
        # Its own /tmp, as each Lambda environment has: the registry's model cache and a model from S3 live there,
        # and environments (of one server, or of two) sharing /tmp/model would evict each other's files mid-load.
        self.tmp = Path(tempfile.mkdtemp(prefix=f"lambda-{config.name}-"))
        self.runtimes: list[int] = []  # the emulator's runtime processes, as `terminate` found them
        self.stopping = threading.Event()  # set by `terminate`: what the runtime says while it is stopped is dropped
        self.port, self.process = start_on_free_port(lambda port: self._start(binary, port, log))

    def _start(self, binary: Path, port: int, log: TextIO) -> subprocess.Popen[bytes]:
        command = [
            str(binary),
            "--log-level", "error",
            "--runtime-interface-emulator-address", f"127.0.0.1:{port}",
            "--runtime-api-address", f"127.0.0.1:{_free_port()}",
            sys.executable, "-m", "awslambdaric", self.config.handler,
        ]  # fmt: skip
        environment = lambda_environment(self.config)
        environment["TMPDIR"] = str(self.tmp)
        environment.setdefault("MODEL_CACHE_DIR", str(self.tmp / "model"))  # the template's /tmp/model, in its /tmp
        process = subprocess.Popen(
            command,
            cwd=self.config.code_dir,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=self._prepare_runtime,
            process_group=0,  # a terminal's Ctrl-C reaches the server alone, which stops this in its turn
        )
        assert process.stdout is not None
        self.log_forwarder = threading.Thread(
            target=_forward_log, args=(process.stdout, log, process.pid, self.stopping), name="log", daemon=True
        )
        self.log_forwarder.start()
        return process

    def _prepare_runtime(self) -> None:
        """In the child, before exec: the function's memory limit, and no life beyond the server's."""
        _limit_memory(self.config.memory_mb)
        _die_with_parent()

    def invoke(self, event: bytes) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{INVOKE_PATH}", data=event, method="POST")
        # The emulator enforces the function timeout itself; the margin covers a slow init.
        with urllib.request.urlopen(request, timeout=self.config.timeout_s + 30) as response:
            return response.read()

    def stop(self) -> None:
        self.terminate()
        self.wait(time.monotonic() + STOP_TIMEOUT_S)

    def terminate(self) -> None:
        """Ask the emulator to stop (it stops its runtime); `wait` reaps it. Apart, so that a pool stops at once."""
        self.stopping.set()
        self.runtimes = _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.terminate()

    def wait(self, deadline: float) -> None:
        """Reap the emulator, killed (with its runtime) if it has not stopped by `deadline`."""
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in self.runtimes:  # in their own process group (the emulator's doing): none may outlive it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.log_forwarder.join(timeout=max(0.0, deadline - time.monotonic()))
        shutil.rmtree(self.tmp, ignore_errors=True)


def _forward_log(stream: IO[bytes], log: TextIO, emulator_pid: int, stopping: threading.Event) -> None:
    """The emulator's output to the log, with the real peak memory in REPORT lines, until the environment is stopped
    (then the runtime's complaints at losing its emulator mid-request, a traceback, are no news: dropped).

    The RIE writes the function's memory size as `Max Memory Used`; Lambda measures the environment's peak.
    Here that is the runtime's peak resident set, read when the line passes (the runtime is still warm);
    where it cannot be read the field is left out rather than made up.
    """
    for line in iter(stream.readline, b""):
        if stopping.is_set():
            continue  # read on, so the emulator never blocks on a full pipe while it stops
        if line.startswith(b"REPORT RequestId:"):
            peak_mb = runtime_peak_memory_mb(emulator_pid)
            field = f"Max Memory Used: {peak_mb} MB\t".encode() if peak_mb is not None else b""
            line = REPORT_MAX_MEMORY.sub(field, line)
        log.write(line.decode(errors="replace"))
        log.flush()


def runtime_peak_memory_mb(emulator_pid: int) -> int | None:
    """Peak resident memory (Linux's VmHWM) of the emulator's descendants, the runtime running the handler, summed.

    In MB as Lambda counts them (MiB), rounded up; None if there is no such process or /proc cannot say.
    """
    total_kib = 0
    processes = _descendants(emulator_pid)
    for pid in processes:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        peak = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
        if peak is None:
            return None
        total_kib += int(peak[1])
    return -(-total_kib // 1024) if processes else None


def _descendants(pid: int) -> list[int]:
    found, parents = [], [pid]
    while parents:
        for children in Path(f"/proc/{parents.pop()}/task").glob("*/children"):
            try:
                new = [int(child) for child in children.read_text().split()]
            except OSError:  # the thread or process ended meanwhile
                continue
            found += new
            parents += new
    return found


class InProcessEnvironment:
    """Fallback where the emulator cannot run: the handler called directly, in this process."""

    def __init__(self, config: FunctionConfig) -> None:
        self.config = config
        os.environ.update({k: v for k, v in lambda_environment(config).items() if k != "PATH"})
        sys.path.insert(0, str(config.code_dir))
        module, _, attribute = config.handler.rpartition(".")
        self.handler = getattr(importlib.import_module(module), attribute)

    def invoke(self, event: bytes) -> bytes:
        deadline = time.monotonic() + self.config.timeout_s
        context = SimpleNamespace(
            function_name=self.config.name,
            function_version="$LATEST",
            memory_limit_in_mb=self.config.memory_mb,
            invoked_function_arn=f"arn:aws:lambda:us-east-1:000000000000:function:{self.config.name}",
            aws_request_id=str(uuid.uuid4()),
            log_group_name=f"/aws/lambda/{self.config.name}",
            log_stream_name="local",
            get_remaining_time_in_millis=lambda: max(0, int((deadline - time.monotonic()) * 1000)),
        )
        return json.dumps(self.handler(json.loads(event), context)).encode()

    def stop(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def wait(self, deadline: float) -> None:
        pass


def start_environment(config: FunctionConfig, in_process: bool = False) -> ExecutionEnvironment:
    binary = None if in_process else emulator_binary()
    if binary is None:
        if not in_process:
            LOG.warning("the Lambda Runtime Interface Emulator cannot run here; calling the handler in-process")
        return InProcessEnvironment(config)
    return EmulatedEnvironment(config, binary, log=sys.stderr)


class EnvironmentPool:
    """Warm execution environments, each serving one request at a time, as Lambda does.

    Quacks like SAM's LocalLambdaRunner, which is all LocalApigwService asks of it.
    """

    def __init__(self, config: FunctionConfig, size: int, in_process: bool = False) -> None:
        self.environments = [start_environment(config, in_process) for _ in range(size)]
        self.idle: queue.Queue[ExecutionEnvironment] = queue.Queue()
        for environment in self.environments:
            self.idle.put(environment)
        self.stopping = False

    def invoke(
        self, function_identifier: str, event: str, stdout: StreamWriter, stderr: StreamWriter, **_: Any
    ) -> None:
        environment = self.idle.get()
        try:
            response = environment.invoke(event.encode())
        except Exception:
            if not self.stopping:
                raise
            response = b""
        finally:
            self.idle.put(environment)
        if self.stopping and not _is_proxy_response(response):
            # A request in flight when the server stops: an answer that says so, not a traceback and a 502. The
            # emulator either drops the connection or, having stopped its runtime, answers with its own error.
            response = json.dumps(STOPPING_RESPONSE).encode()
        stdout.write_str(response.decode())

    def call(self, event: dict[str, Any]) -> Any:
        """Invoke with an event (an SQS batch, say) and return the function's JSON answer."""
        environment = self.idle.get()
        try:
            return json.loads(environment.invoke(json.dumps(event).encode()))
        finally:
            self.idle.put(environment)

    def is_debugging(self) -> bool:
        return False  # LocalApigwService then serves requests on many threads

    def terminate(self) -> None:
        self.stopping = True
        for environment in self.environments:
            environment.terminate()

    def wait(self, deadline: float) -> None:
        for environment in self.environments:
            environment.wait(deadline)

    def stop(self) -> None:
        self.terminate()
        self.wait(time.monotonic() + STOP_TIMEOUT_S)


def _is_proxy_response(response: bytes) -> bool:
    """Whether the function answered API Gateway (a status code), rather than the emulator reporting its end."""
    try:
        answer = json.loads(response)
    except ValueError:
        return False
    return isinstance(answer, dict) and isinstance(answer.get("statusCode"), int)


def invoke_command(args: argparse.Namespace) -> int:
    if args.event and not args.event.is_file():
        available = ", ".join(sorted(str(p) for p in Path("events").glob("*.json"))) or "none in events/"
        raise UsageError(f"event file {args.event} does not exist (available: {available})")
    config, _ = load_function(args.template, args.function, args.env_vars)
    config = with_admin_key_id(without_registry(config), "")  # no moto here: no registry, as `serve --no-jobs`
    event = args.event.read_bytes() if args.event else b"{}"
    environment = start_environment(config, args.in_process)
    try:
        response = environment.invoke(event)
    finally:
        time.sleep(0.2)  # let the emulator print END/REPORT before it stops
        environment.stop()
    sys.stdout.write(response.decode() + "\n")
    return 0


def serve_command(args: argparse.Namespace) -> int:
    # Both signals stop the server the same way, set before anything starts. SIGINT is set even where it was
    # inherited ignored (a script's background job): ignored here, it would stop the emulators alone (they set
    # their own handlers) and leave /predict answering 502.
    if args.admin_api_key and args.admin_api_key in (args.api_key or "").split(","):
        raise UsageError("--admin-api-key must differ from each --api-key: that caller would be the registry's admin")
    stopper = Stopper()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopper)
    # The API's port is bound first, before the emulators and moto take theirs: `--port 0` then gets a port no
    # one else can take, and the log's first line says which (tests and scripts read it there).
    listener = _listen(args.host, args.port)
    port = listener.getsockname()[1]
    LOG.info("Listening on http://%s:%s", args.host if ":" not in args.host else f"[{args.host}]", port)
    jobs, pools, watch = None, {}, None
    in_flight = InFlight(lambda environ, start_response: [])
    try:
        configs, api, queue_events, keyless_paths = load_functions(args.template, args.env_vars)
        api_functions = sorted({route.function_name for route in api.routes})
        watch = ModelWatch.start(configs[api_functions[0]]) if api_functions else None
        if any(queue_events.values()) and not args.no_jobs:
            jobs = LocalJobs.start()
        configs = local_configs(configs, jobs, args.admin_api_key)
        for name in api_functions:
            pools[name] = EnvironmentPool(configs[name], args.workers, args.in_process)
        if jobs is not None:
            for name, events in queue_events.items():
                if events:
                    pool = EnvironmentPool(configs[name], args.job_workers, args.in_process)
                    pools[name] = pool
                    for event in events:
                        jobs.feed(event, pool)
        runner = FunctionRouter(
            pools, api_keys=args.api_key.split(",") if args.api_key else [], admin_api_key=args.admin_api_key
        )
        service = LocalApigwService(
            api=api,
            lambda_runner=runner,
            port=args.port,
            host=args.host,
            stderr=StreamWriter(sys.stderr, auto_flush=True),
        )
        service.create()
        _answer_unknown_paths(service, sorted({route.path for route in api.routes}))
        if args.api_key:
            _require_api_key(service, runner.api_keys, keyless_paths)
        LOG.info("%s", routes_summary(api.routes))
        for name in api_functions:
            config = configs[name]
            LOG.info(
                "%s: %d warm environment(s), timeout %ss, memory %s MB",
                name,
                args.workers,
                config.timeout_s,
                config.memory_mb,
            )
        if jobs is not None:
            LOG.info(
                "jobs: S3, DynamoDB and SQS on moto at %s; %d worker environment(s)", jobs.endpoint, args.job_workers
            )
            LOG.info(
                "model registry: bucket %s and table %s on moto, writes on%s",
                jobs.registry.bucket,
                jobs.registry.table,
                " for the admin key only" if args.admin_api_key else "",
            )
        stopper.arm()
        _run(service, listener, stopper, in_flight)
    except StoppedBySignalError:
        pass
    finally:
        # In order, each before what it uses: the API and the model watch, the pollers (which call the job
        # functions and moto), moto, then every environment at once. Quiet: what fails now is only stopping.
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the ordered stop short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        listener.close()
        if watch is not None:
            watch.stop()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        if jobs is not None:
            jobs.stop(deadline)
        for pool in pools.values():
            pool.terminate()
        for pool in pools.values():
            pool.wait(deadline)
        # The answers of requests cut short ("stopping") are written before the process exits.
        in_flight.wait_idle(max(deadline, time.monotonic() + 1.0))
    LOG.info("stopped")
    return 0


class StoppedBySignalError(Exception):
    """SIGINT or SIGTERM: the server stops, in order (`serve_command`)."""


class Stopper:
    """The handler of SIGINT and SIGTERM: once armed, stops the HTTP server's loop (or, before it runs, raises
    StoppedBySignalError); a signal during start-up stops the server as soon as it has started, so that nothing is
    left half-started (a pool with one environment of two)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.armed = False
        self.shutdown: Callable[[], None] | None = None  # the running HTTP server's, once it runs

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name
        if not self.armed:
            return
        if self.shutdown is None:
            raise StoppedBySignalError(self.requested)
        # Not an exception: raised while this thread handles a request's connection, socketserver would catch it
        # as that request's error and serve on. The loop is told to end, from a thread (shutdown waits for it).
        threading.Thread(target=self.shutdown, name="stop", daemon=True).start()

    def arm(self) -> None:
        self.armed = True
        if self.requested is not None:
            raise StoppedBySignalError(self.requested)


def routes_summary(routes: list[Any]) -> str:
    """One line for the API's routes (SAM logs a line per route): per function, how many paths and which."""
    by_function: dict[str, set[str]] = {}
    for route in routes:
        by_function.setdefault(route.function_name, set()).add(route.path)
    parts = [f"{name}: {len(paths)} paths ({' '.join(sorted(paths))})" for name, paths in sorted(by_function.items())]
    return f"routes: {'; '.join(parts)} (anything else: 404 naming them)"


def _answer_unknown_paths(service: LocalApigwService, paths: list[str]) -> None:
    """A path the template does not declare gets a 404 that names the declared ones.

    API Gateway (and SAM's local one) answers such a path with `403 {"message": "Missing Authentication
    Token"}`, which reads as a problem with the key; locally, where a mistyped path is the usual cause, the
    answer says what it is and what the deployed API will answer instead.
    """
    import flask

    def not_found(error: Exception) -> Any:
        request = flask.request
        path = request.path if len(request.path) <= 100 else request.path[:97] + "..."
        message = (
            f"{path} is not a path of this API: it serves {', '.join(paths)}. Deployed, API Gateway answers "
            'a path it does not serve with 403 {"message": "Missing Authentication Token"}'
        )
        body = {
            "error": f"no route {request.method} {path}",
            "details": [{"field": "path", "message": message}],
            "routes": paths,
        }
        return flask.Response(json.dumps(body), status=404, content_type="application/json")

    service._app.register_error_handler(404, not_found)


@dataclass(frozen=True)
class ModelState:
    """What a manifest in model_artifacts/ says, as the log names it: `park1991/1`, or why it cannot be read."""

    digest: str  # of the manifest's bytes ("" if there is none)
    label: str

    @classmethod
    def read(cls, manifest_path: Path) -> ModelState:
        from handler.gp.artifact import Manifest

        try:
            text = manifest_path.read_bytes()
        except OSError:
            return cls("", "no model")
        digest = hashlib.sha256(text).hexdigest()
        try:
            manifest = Manifest.parse(text)
        except (ValueError, RecursionError):
            return cls(digest, "an unreadable manifest")
        return cls(digest, f"{manifest.name}/{manifest.version}")


class ModelWatch:
    """Says at start which model the API serves, and warns, once per change, when model_artifacts/ changes under
    the running server: its warm environments keep the model they loaded, so a repackaged model needs a restart."""

    INTERVAL_S = 2.0

    def __init__(self, manifest_path: Path) -> None:
        self.manifest_path = manifest_path
        self.served = self.seen = ModelState.read(manifest_path)
        self.signature = self._signature()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)

    @classmethod
    def start(cls, config: FunctionConfig) -> ModelWatch | None:
        """Log the served model (one line); watch its manifest if it is packaged (a model from S3 is not)."""
        s3_uri = config.environment.get("MODEL_S3_URI")
        if s3_uri:
            LOG.info("model: from %s, read by each environment on its first request", s3_uri)
            return None
        model_path = Path(config.environment.get("MODEL_PATH") or "model_artifacts/pretrained-model.npz")
        model_path = model_path if model_path.is_absolute() else config.code_dir / model_path
        LOG.log(*describe_model(model_path, config.code_dir))
        from handler.gp.artifact import manifest_path_for

        watch = cls(manifest_path_for(model_path))
        watch.thread.start()
        return watch

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self.manifest_path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def check(self) -> None:
        """Compare the manifest with the one served: a warning when it changed, a line when it is back."""
        signature = self._signature()
        if signature == self.signature:
            return  # one stat per check: the bytes are read only when the file changed
        self.signature = signature
        state = ModelState.read(self.manifest_path)
        if state.digest == self.seen.digest:
            return
        self.seen = state
        if state.digest == self.served.digest:
            LOG.info("the packaged model is again the one served (%s)", self.served.label)
            return
        served, now = self.served.label, state.label
        if served == now:  # repackaged under the same name and version: the manifests differ all the same
            served, now = f"{served} (manifest {self.served.digest[:12]})", f"{now} (manifest {state.digest[:12]})"
        LOG.warning("the packaged model changed since start (%s -> %s): restart make serve to serve it", served, now)

    def _watch(self) -> None:
        while not self.stopping.wait(self.INTERVAL_S):
            self.check()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=self.INTERVAL_S)


def describe_model(model_path: Path, code_dir: Path) -> tuple[int, str]:
    """The log level and line that say which model is served: name, version, kind, features, outputs, source.

    Read from its manifest, as the function reads it; where that fails, a warning with the reason (the API
    answers 503 until the model is fixed and the server restarted).
    """
    from handler.gp.artifact import ModelUnavailableError, PackagedArtifact, manifest_path_for

    shown = model_path.relative_to(code_dir) if model_path.is_relative_to(code_dir) else model_path
    try:
        manifest = PackagedArtifact(model_path).fetch_manifest()
    except ModelUnavailableError as exc:
        return logging.WARNING, f"model: none served from {shown}: {exc} (the API answers 503 until it is fixed)"
    document = manifest.document
    kernel = (document.get("kernel") or {}).get("name")
    if manifest.format == "npz":
        inference = (document.get("posterior") or {}).get("inference", "exact")
        kind = f"{inference} posterior file"
    else:
        kind = "GPy pickle"
    points = f"{document['n_train']} training points" if isinstance(document.get("n_train"), int) else None
    what = ", ".join(str(part) for part in (manifest.model_type, kernel, points) if part)
    published = manifest.published_training_data or "nothing"
    return logging.INFO, (
        f"model: {manifest.name}/{manifest.version}, {kind} ({what}); "
        f"features {_names(manifest.features)}; outputs {_names(manifest.outputs)}; training data published: "
        f"{published}; from {shown.with_name(document['artifact'])} "
        f"(manifest {manifest_path_for(shown)}, sha256 {manifest.sha256[:12]})"
    )


def _names(names: tuple[str, ...], shown: int = 10) -> str:
    listed = ", ".join(names[:shown])
    return listed if len(names) <= shown else f"{listed}, ... ({len(names)} in all)"


class FunctionRouter:
    """SAM's LocalLambdaRunner for several functions: each route's function has its own pool.

    With API keys (the callers' and the registry admin's), it adds what API Gateway puts in the event for a keyed
    request: the key's id.
    """

    def __init__(
        self, pools: dict[str, EnvironmentPool], api_keys: list[str], admin_api_key: str | None = None
    ) -> None:
        self.pools = pools
        self.api_keys = {key: "local-" + hashlib.sha256(key.encode()).hexdigest()[:12] for key in api_keys}
        if admin_api_key:  # the registry admin's key, with the id the functions know it by
            self.api_keys[admin_api_key] = LOCAL_ADMIN_KEY_ID

    def invoke(
        self, function_identifier: str, event: str, stdout: StreamWriter, stderr: StreamWriter, **_: Any
    ) -> None:
        if self.api_keys:
            import flask

            key = flask.request.headers.get("x-api-key", "")
            data = json.loads(event)
            data.setdefault("requestContext", {}).setdefault("identity", {}).update(
                apiKey=key, apiKeyId=self.api_keys.get(key)
            )
            event = json.dumps(data)
        self.pools[function_identifier].invoke(function_identifier, event, stdout, stderr)

    def is_debugging(self) -> bool:
        return False  # LocalApigwService then serves requests on many threads


class LocalJobs:
    """moto's server on loopback with the jobs' bucket, table and queues, the model registry's bucket and table, and
    pollers feeding the functions."""

    def __init__(self, server: Any, endpoint: str) -> None:
        from scripts.local_jobs import create_registry, create_resources

        self.server = server
        self.endpoint = endpoint
        self.client_args: dict[str, Any] = {
            "endpoint_url": endpoint,
            "region_name": _region(),
            "aws_access_key_id": "local",
            "aws_secret_access_key": "local",
        }
        self.resources = create_resources(**self.client_args)
        self.registry = create_registry(**self.client_args)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    @classmethod
    def start(cls) -> LocalJobs:
        """moto's server in its own process (its request log would drown the API's), on a free loopback port.

        It is `scripts/local_jobs.py`'s `moto_app`: moto's, but a presigned PUT keeps its body whatever its
        Content-Type, as S3 does.
        """
        script = str(Path(__file__).with_name("local_jobs.py"))
        port, server = start_on_free_port(
            lambda port: subprocess.Popen(
                [sys.executable, script, "--host", "127.0.0.1", "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                process_group=0,  # a terminal's Ctrl-C reaches the server alone, which stops moto after the pollers
            ),
            timeout_s=30,
        )
        try:
            return cls(server, f"http://127.0.0.1:{port}")
        except BaseException:
            server.kill()
            server.wait()
            raise

    def configure(self, config: FunctionConfig) -> FunctionConfig:
        """The function's environment pointed at the local resources, as the template's !Ref and !GetAtt would."""
        environment = {
            **config.environment,
            **self.resources.environment(),
            **self.registry.environment(),
            "AWS_ENDPOINT_URL": self.endpoint,
        }
        return dataclasses.replace(config, environment=environment)

    def feed(self, event: QueueEvent, pool: EnvironmentPool) -> None:
        import boto3

        from scripts.local_jobs import SqsEventSource

        queues = {
            "JobQueue": (self.resources.work_queue_url, self.resources.work_queue_arn),
            "ResultsQueue": (self.resources.results_queue_url, self.resources.results_queue_arn),
            "JobDeadLetterQueue": (self.resources.dead_letter_queue_url, self.resources.dead_letter_queue_arn),
            "TrainingQueue": (self.registry.training_queue_url, self.registry.training_queue_arn),
        }
        url, arn = queues[event.queue]
        # One poller per warm environment, as Lambda scales its invocations with the queue: a job's chunks run on
        # every environment at once (--job-workers)
        for number in range(len(pool.environments)):
            source = SqsEventSource(boto3.client("sqs", **self.client_args), url, arn, pool.call, event.batch_size)
            name = f"poll-{event.queue}-{number}"
            thread = threading.Thread(target=source.run, args=(self.stopping,), name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, deadline: float) -> None:
        """The pollers (each ends within its 1 s receive wait, or its invocation), then moto; by `deadline`."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.server.terminate()
        try:
            self.server.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()


def local_configs(
    configs: dict[str, FunctionConfig], jobs: LocalJobs | None, admin_api_key: str | None
) -> dict[str, FunctionConfig]:
    """Every function's configuration as the local server runs it: pointed at the jobs' and the registry's resources
    on moto (without them, no registry), and told the admin key's id."""
    admin_key_id = LOCAL_ADMIN_KEY_ID if admin_api_key else ""
    return {
        name: with_admin_key_id(jobs.configure(config) if jobs is not None else without_registry(config), admin_key_id)
        for name, config in configs.items()
    }


def without_registry(config: FunctionConfig) -> FunctionConfig:
    """The function without the model registry (`--no-jobs`: no moto): its variables unset, as in a stack without a
    registry, so that the packaged model serves as before and the registry's routes answer that it is not there."""
    environment = {k: v for k, v in config.environment.items() if k not in REGISTRY_RESOURCE_VARIABLES}
    return dataclasses.replace(config, environment=environment)


def with_admin_key_id(config: FunctionConfig, admin_key_id: str) -> FunctionConfig:
    """The function told the admin key's id (`--admin-api-key`), or "" without one (the template's value names a
    key that exists only once deployed)."""
    return dataclasses.replace(config, environment={**config.environment, "REGISTRY_ADMIN_KEY_ID": admin_key_id})


def _region() -> str:
    return os.environ.get("AWS_REGION", "us-east-1")


def _require_api_key(service: LocalApigwService, keys: dict[str, str], keyless_paths: set[str]) -> None:
    """Refuse requests without a known `x-api-key` as API Gateway does with ApiKeyRequired: 403 before the function.

    Routes whose event sets `ApiKeyRequired: false` (the explorer's page and assets) are served without one, and
    so are paths the API does not serve: API Gateway refuses those before it looks at the key (here, a 404).
    """
    import flask

    def check() -> Any:
        rule = flask.request.url_rule
        if rule is None or rule.rule in keyless_paths:
            return None
        if flask.request.headers.get("x-api-key") not in keys:
            return flask.Response('{"message": "Forbidden"}', status=403, content_type="application/json")
        return None

    service._app.before_request(check)


def spawn_serve(
    log: Path, *options: str, env_vars: Path | None = None, timeout_s: float = 60.0, **popen_options: Any
) -> tuple[subprocess.Popen[bytes], str]:
    """`serve --port 0 OPTIONS` in a process of its own, logging to `log`: the process and the base URL its first log
    line names. The server binds its port before anything else, so no other program can take it between choosing
    and binding, and nothing reaches someone else's server. RuntimeError (with the log) if it does not say.

    `popen_options` go to Popen (`start_new_session=True`: in a process group of its own, as a terminal's job)."""
    command = [sys.executable, str(Path(__file__).resolve())]
    command += ["--env-vars", str(env_vars)] if env_vars is not None else []
    command += ["serve", "--port", "0", *options]
    with log.open("w") as handle:
        process = subprocess.Popen(
            command,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
            **popen_options,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"^Listening on (http://\S+)$", log.read_text(), re.MULTILINE)
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError(f"the local server did not say where it listens:\n{log.read_text()}")


def _listen(host: str, port: int) -> socket.socket:
    """The API's listening socket; port 0 is any free one."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        reason = os.strerror(exc.errno or 0)
        raise UsageError(
            f"cannot listen on {host}:{port}: {reason}; is another server (make serve) running there? Stop it, or "
            "choose another port: make serve PORT=3001 (--port 0: any free one)"
        ) from exc


class InFlight:
    """WSGI middleware counting the requests whose answer is not yet written, so that stopping can let them finish:
    the server's request threads are daemons, and the process's exit would cut an answer after its headers."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.count = 0
        self.changed = threading.Condition()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self.changed:
            self.count += 1
        try:
            return _ClosingBody(self.app(environ, start_response), self._done)
        except BaseException:
            self._done()
            raise

    def _done(self) -> None:
        with self.changed:
            self.count -= 1
            self.changed.notify_all()

    def wait_idle(self, deadline: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.count == 0, timeout=max(0.0, deadline - time.monotonic()))


class _ClosingBody:
    """An answer's body whose `close` (called by the server once the body is written) reports it done."""

    def __init__(self, body: Any, done: Callable[[], None]) -> None:
        self.body, self.done = body, done

    def __iter__(self) -> Any:
        return iter(self.body)

    def close(self) -> None:
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            self.done()


def _run(service: LocalApigwService, listener: socket.socket, stopper: Stopper, in_flight: InFlight) -> None:
    """SAM's `service.run()` on a socket already bound: threaded and quiet, until a signal stops it."""
    from werkzeug.serving import make_server

    host, port = listener.getsockname()[:2]
    in_flight.app = service._app
    server = make_server(host, port, in_flight, threaded=True, fd=listener.fileno())
    stopper.shutdown = server.shutdown
    if stopper.requested is not None:  # signalled while the server was made (shutdown would wait for a loop)
        server.server_close()
        return
    server.serve_forever()  # until a signal's `shutdown` (from another thread) ends it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_on_free_port(start: Any, attempts: int = 3, timeout_s: float = 10.0) -> tuple[int, subprocess.Popen[bytes]]:
    """`start(port)` on a free port, again on another if the process exits first: a port found free can be taken
    (by any client's outgoing connection) before the process binds it."""
    for attempt in range(attempts):
        port = _free_port()
        process = start(port)
        try:
            _wait_for_port(port, process, timeout_s)
            return port, process
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"process {process.pid} exited with code {process.returncode} before listening on {port}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"process {process.pid} did not listen on port {port} within {timeout_s}s")


def _die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the server dies, even by SIGKILL, so that no emulator or moto outlives
    it (Linux's PR_SET_PDEATHSIG; elsewhere nothing). Tied to the thread that started the child: the main one."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _limit_memory(memory_mb: int) -> None:
    """Cap the data segment (heap and anonymous mappings) at the function's memory size, like a container limit."""
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", "-t", type=Path, default=Path("template.yaml"))
    parser.add_argument("--function", help="logical ID of the function, if the template has several")
    parser.add_argument("--env-vars", "-n", type=Path, help="JSON file of environment overrides, as for sam local")
    parser.add_argument("--in-process", action="store_true", help="call the handler in-process, not under the emulator")
    commands = parser.add_subparsers(dest="command", required=True)
    invoke = commands.add_parser("invoke", help="run one event, like `sam local invoke -e`")
    invoke.add_argument("--event", "-e", type=Path, help="event file (default: an empty event)")
    invoke.set_defaults(run=invoke_command)
    serve = commands.add_parser("serve", help="serve the API on loopback, like `sam local start-api`")
    serve.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "localhost", "::1"], help="loopback only")
    serve.add_argument("--port", "-p", type=int, default=3000, help="0: any free port (the log says which)")
    serve.add_argument("--workers", "-w", type=int, default=2, help="warm execution environments (default 2)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("LOCAL_API_KEY"),
        help="require this x-api-key (several: comma-separated, each its own caller), as the deployed API does",
    )
    serve.add_argument(
        "--admin-api-key",
        default=os.environ.get("LOCAL_ADMIN_API_KEY"),
        help="the model registry's admin key: requests with it as x-api-key may publish, move aliases and delete "
        "(the deployed admin key); with --api-key it is accepted on every route too",
    )
    serve.add_argument("--job-workers", type=int, default=2, help="warm environments per job function (default 2)")
    serve.add_argument(
        "--no-jobs", action="store_true", help="serve the API only: no moto, no job workers, no model registry"
    )
    serve.set_defaults(run=serve_command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("SAM_CLI_TELEMETRY", "0")
    for path, what in ((args.template, "template"), (args.env_vars, "--env-vars file")):
        if path is not None and not path.is_file():
            parser.exit(2, f"local_lambda: error: {what} {path} does not exist\n")
    try:
        return int(args.run(args))
    except UsageError as exc:
        parser.exit(2, f"local_lambda: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
