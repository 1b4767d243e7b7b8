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

Where the emulator cannot run (not Linux, or no binary for this machine) the handler is called
in-process instead, with a warning.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import queue
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol, TextIO

import samcli
from samcli.lib.providers.api_provider import ApiProvider
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
from samcli.lib.utils.stream_writer import StreamWriter
from samcli.local.apigw.local_apigw_service import LocalApigwService
from samcli.local.docker.exceptions import ProcessSigTermException

LOG = logging.getLogger("local_lambda")
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
# Variables the host must pass on: OpenBLAS needs OPENBLAS_CORETYPE on some CPUs to compute correctly.
PASS_THROUGH_PREFIXES = ("OPENBLAS_",)


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


def load_function(
    template: Path, function_name: str | None = None, env_vars_file: Path | None = None
) -> tuple[FunctionConfig, Any]:
    """The function (with Globals applied) and the API routes of a SAM template."""
    # AWS::LanguageExtensions: the parameter-driven Fn::If resolved for the defaults, as CloudFormation does.
    stacks, _ = SamLocalStackProvider.get_stacks(str(template), language_extensions_enabled=True)
    functions = [f for f in SamFunctionProvider(stacks).get_all() if f.packagetype == "Zip"]
    if function_name:
        functions = [f for f in functions if function_name in (f.name, f.functionname)]
    if len(functions) != 1:
        names = ", ".join(f.name for f in SamFunctionProvider(stacks).get_all())
        raise SystemExit(f"name one function of the template ({names})")
    function = functions[0]
    environment = {k: str(v) for k, v in ((function.environment or {}).get("Variables") or {}).items()}
    if env_vars_file:  # sam's --env-vars format: {"Parameters": {...}} for all, {"<FunctionName>": {...}} for one
        overrides = json.loads(env_vars_file.read_text())
        for key in ("Parameters", function.name):
            environment.update({k: str(v) for k, v in overrides.get(key, {}).items()})
    config = FunctionConfig(
        name=function.name,
        handler=function.handler,
        code_dir=(template.parent / (function.codeuri or ".")).resolve(),
        timeout_s=int(function.timeout or 3),
        memory_mb=int(function.memory or 128),
        environment=environment,
    )
    return config, ApiProvider(stacks, cwd=str(template.parent)).api


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


class EmulatedEnvironment:
    """One Lambda execution environment: the RIE running our handler through awslambdaric.

    Like Lambda, the runtime starts (init) on the first invoke and then stays warm.
    """

    def __init__(self, config: FunctionConfig, binary: Path, log: TextIO) -> None:
        self.config = config
        self.port = _free_port()
        command = [
            str(binary),
            "--log-level", "error",
            "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
            "--runtime-api-address", f"127.0.0.1:{_free_port()}",
            sys.executable, "-m", "awslambdaric", config.handler,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=config.code_dir,
            env=lambda_environment(config),
            stdout=log,
            stderr=log,
            preexec_fn=lambda: _limit_memory(config.memory_mb),
        )
        _wait_for_port(self.port, self.process)

    def invoke(self, event: bytes) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{INVOKE_PATH}", data=event, method="POST")
        # The emulator enforces the function timeout itself; the margin covers a slow init.
        with urllib.request.urlopen(request, timeout=self.config.timeout_s + 30) as response:
            return response.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


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

    def invoke(
        self, function_identifier: str, event: str, stdout: StreamWriter, stderr: StreamWriter, **_: Any
    ) -> None:
        environment = self.idle.get()
        try:
            stdout.write_str(environment.invoke(event.encode()).decode())
        finally:
            self.idle.put(environment)

    def is_debugging(self) -> bool:
        return False  # LocalApigwService then serves requests on many threads

    def stop(self) -> None:
        for environment in self.environments:
            environment.stop()


def invoke_command(args: argparse.Namespace) -> int:
    if args.event and not args.event.is_file():
        available = ", ".join(sorted(str(p) for p in Path("events").glob("*.json"))) or "none in events/"
        raise UsageError(f"event file {args.event} does not exist (available: {available})")
    config, _ = load_function(args.template, args.function, args.env_vars)
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
    config, api = load_function(args.template, args.function, args.env_vars)
    pool = EnvironmentPool(config, args.workers, args.in_process)
    service = LocalApigwService(
        api=api, lambda_runner=pool, port=args.port, host=args.host, stderr=StreamWriter(sys.stderr, auto_flush=True)
    )
    service.create()
    if args.api_key:
        _require_api_key(service, args.api_key)
    for route in api.routes:
        LOG.info(
            "Mounting %s at http://%s:%s%s %s", route.function_name, args.host, args.port, route.path, route.methods
        )
    LOG.info(
        "%d warm execution environment(s), timeout %ss, memory %s MB", args.workers, config.timeout_s, config.memory_mb
    )
    try:
        service.run()
    except (KeyboardInterrupt, ProcessSigTermException):  # Ctrl-C, or SIGTERM (SAM's handler raises this)
        LOG.info("stopped")
    finally:
        pool.stop()
    return 0


def _require_api_key(service: LocalApigwService, key: str) -> None:
    """Refuse requests without `x-api-key: KEY` as API Gateway does with ApiKeyRequired: 403 before the function."""
    import flask

    def check() -> Any:
        if flask.request.headers.get("x-api-key") != key:
            return flask.Response('{"message": "Forbidden"}', status=403, content_type="application/json")
        return None

    service._app.before_request(check)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the emulator did not listen on port {port} within {timeout_s}s")


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
    serve.add_argument("--port", "-p", type=int, default=3000)
    serve.add_argument("--workers", "-w", type=int, default=2, help="warm execution environments (default 2)")
    serve.add_argument(
        "--api-key", default=os.environ.get("LOCAL_API_KEY"), help="require this x-api-key, as the deployed API does"
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
