"""How long the explorer page takes to follow a slider: headless Chromium against the local server.

    .venv/bin/python benchmarks/explorer_redraw.py [--moves 40] [--model model_artifacts/pretrained-model.npz]

Each move is one keyboard step of a slider, then a wait for its redraw (one POST /predict, then the pictures). The
page times each redraw itself (`window.explorer.state.timings`, and the request's share in `requestTimings`).
Where the model publishes its training points, moves alternate in blocks between drawing them and not (the page's
state with its training points set aside), so the two are measured side by side on the same machine.

Needs Debian's `chromium` and `chromium-driver` (`make browser`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.local_lambda import spawn_serve  # noqa: E402

BLOCK = 10  # moves per block; blocks alternate with and without the training points


def start_server(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    env_file = log.with_name("env.json")
    env_file.write_text(json.dumps({"Parameters": {"MODEL_PATH": str(model.resolve())}}))
    return spawn_serve(log, "-w", "1", "--no-jobs", env_vars=env_file)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise SystemExit("needs chromium and chromedriver: `make browser` installs Debian's")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def settled(session) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(session, 60).until(
        lambda b: b.execute_script(
            "const s = document.body.dataset, e = window.explorer;"
            "return s.state === 'idle' && !!s.sensitivity && !!e && !e.state.inFlight"
        )
    )


def move(session, feature: str, key: str) -> tuple[float, float]:
    """One slider step and its redraw: (ms to the pictures, ms of it the request)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    before = int(session.find_element(By.TAG_NAME, "body").get_attribute("data-redraws"))
    session.find_element(By.ID, f"slider-{feature}").send_keys(key)
    WebDriverWait(session, 60).until(
        lambda b: int(b.find_element(By.TAG_NAME, "body").get_attribute("data-redraws")) > before
    )
    settled(session)
    return session.execute_script("const s = window.explorer.state; return [s.timings.at(-1), s.requestTimings.at(-1)]")


def main() -> None:
    from selenium.webdriver.common.keys import Keys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=40, help="slider moves per condition (default 40)")
    parser.add_argument("--model", type=Path, default=ROOT / "model_artifacts" / "pretrained-model.npz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        process, base_url = start_server(args.model, Path(scratch) / "server.log")
        session = browser()
        try:
            session.get(f"{base_url}/explore")
            settled(session)
            features = session.execute_script("return window.explorer.state.model.features")
            published = session.execute_script("return window.explorer.state.training !== null")
            training = session.execute_script("return window.explorer.state.training")
            conditions = ["with training points", "without"] if published else ["without"]
            results: dict[str, list[tuple[float, float]]] = {c: [] for c in conditions}
            step = 0
            while min(len(r) for r in results.values()) < args.moves:
                for condition in conditions:
                    session.execute_script("window.explorer.state.training = arguments[0]",
                                           training if condition != "without" else None)  # fmt: skip
                    for _ in range(BLOCK):
                        # back and forth along the first feature's slider, so the pictures stay comparable
                        key = Keys.ARROW_RIGHT if (step // BLOCK) % 2 == 0 else Keys.ARROW_LEFT
                        results[condition].append(move(session, features[0], key))
                        step += 1
        finally:
            session.quit()
            process.terminate()
            process.wait(timeout=30)
    print(f"{base_url}/explore, {args.moves} one-step slider moves per condition, in alternating blocks of {BLOCK}")
    medians = {}
    for condition, samples in results.items():
        total = sorted(t for t, _ in samples[: args.moves])
        request = sorted(r for _, r in samples[: args.moves])
        medians[condition] = statistics.median(total)
        p90 = total[int(0.9 * (len(total) - 1))]
        print(f"  {condition:>22}: redraw median {medians[condition]:.0f} ms, p90 {p90:.0f} ms; "
              f"request median {statistics.median(request):.0f} ms")  # fmt: skip
    if len(medians) == 2:
        print(f"  ratio of medians, with / without training points: {medians[conditions[0]] / medians['without']:.2f}")


if __name__ == "__main__":
    main()
