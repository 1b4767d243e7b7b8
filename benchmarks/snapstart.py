"""Cold start with the model loaded lazily, against loaded before a SnapStart snapshot, measured locally.

Each run is a fresh process with the handler's environment. Lazy: import the handler, then the first request
(imports GPy, unpickles, predicts). SnapStart: import the handler and run the runtime's before-snapshot hooks
(awslambdaric's own runner, as at version publication), then the first request, as a restored environment
would see it. What Lambda adds to restore a snapshot cannot be measured here and is not included.

    python benchmarks/snapstart.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RUN = r"""
import json, sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import handler.app as app
from tests.events import api_event, lambda_context
imported = time.perf_counter()
if sys.argv[2] == "snapstart":
    from awslambdaric import lambda_runtime_hooks_runner
    lambda_runtime_hooks_runner.run_before_snapshot()
    lambda_runtime_hooks_runner.run_after_restore()
hooked = time.perf_counter()
response = app.lambda_handler(api_event(body={"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}), lambda_context())
assert response["statusCode"] == 200, response
answered = time.perf_counter()
print(json.dumps({"import": imported - started, "hooks": hooked - imported, "first_request": answered - hooked}))
"""


def run(mode: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(ROOT), mode], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"lazy": [], "snapstart": []}
    for _ in range(args.repeats):  # alternate, so both see the same machine
        for mode in runs:
            runs[mode].append(run(mode))
    median = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()}
    print(f"medians of {args.repeats} fresh processes each (seconds)")
    print("| mode | import handler | before-snapshot hook | first request |\n|---|---|---|---|")
    for mode, m in median.items():
        print(f"| {mode} | {m['import']:.3f} | {m['hooks']:.3f} | {m['first_request']:.4f} |")
    lazy, snap = median["lazy"], median["snapstart"]
    print(
        f"\nfirst request: {lazy['first_request']:.3f} s lazy vs {snap['first_request']:.4f} s after a snapshot "
        f"({lazy['first_request'] / snap['first_request']:.0f}x); the hook's {snap['hooks']:.3f} s is paid once, "
        "when the version is published"
    )


if __name__ == "__main__":
    main()
