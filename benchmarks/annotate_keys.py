"""Label N features of a finished demo run by key presses in headless Chromium, as a person would with
`cafe annotate`, and time the page: from a key press until the next feature is fully shown (answer written to the
CSV, images loaded). Saves a screenshot of the page. This measures the tool's latency, not a person's thinking;
through the harness (cafe/bench/harness.py): a busy machine is refused, or the latencies marked void.

    python benchmarks/annotate_keys.py --workspace /path/to/finished/demo --layer 6 --n 20 \
        --screenshot docs/img/annotate.png --out benchmarks/results/annotate_keys.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import annotate_server, chromium

from cafe.bench.harness import add_arguments, from_arguments, summary

SHOWN = "return document.images.length > 0 && [...document.images].every(i => i.complete && i.naturalWidth > 0)"


def wait(driver, condition, timeout: float = 60.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.01).until(condition)


def label(workspace: Path, layer: int, n: int, annotator: str, screenshot: Path) -> dict:
    """Answer the first `n` features by keys (the sheet's suggestion as the answer); per-feature latencies."""
    from selenium.webdriver.common.action_chains import ActionChains

    sheet = pd.read_csv(workspace / f"results/annotation/sheets/layer{layer}.csv")
    keys = ["y" if s == "yes" else "n" for s in sheet["suggested"].fillna("no")][:n]
    latencies = []
    with annotate_server(workspace, "--layer", str(layer), "--annotator", annotator) as url, chromium() as driver:
        started = time.perf_counter()
        driver.get(url)
        wait(driver, lambda d: d.execute_script(SHOWN) and "answered" in d.find_element("id", "progress").text)
        first_page = time.perf_counter() - started
        for done, key in enumerate(keys, start=1):
            if done == 3:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(screenshot))
            t0 = time.perf_counter()
            ActionChains(driver).send_keys(key).perform()
            wait(driver, lambda d, done=done: f"{done} / " in d.find_element("id", "progress").text)
            wait(driver, lambda d: d.execute_script(SHOWN))
            latencies.append(time.perf_counter() - t0)
    written = pd.read_csv(
        workspace / f"data/annotations/{annotator}/layer{layer}.csv", dtype=str, keep_default_na=False
    )
    answered = int((written["non_local"] != "").sum())
    return {
        "layer": layer,
        "features": n,
        "answered_in_csv": answered,
        "first_page_s": round(first_page, 3),
        "key_to_next_feature_s": {**summary(latencies), "total": sum(latencies)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a project folder after the sheets step")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--annotator", default="keys-bench")
    parser.add_argument("--screenshot", type=Path, default=Path("docs/img/annotate.png"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/annotate_keys.json"))
    add_arguments(parser)
    args = parser.parse_args()
    harness, results = from_arguments(args), []
    admission = harness.admit()
    where = (args.workspace.resolve(), args.layer, args.n, args.annotator, args.screenshot.resolve())
    figure = harness.time(lambda: results.append(label(*where)), repeats=1, warmup=0)
    result = {**results[0], "admission": admission, "void": figure.void, "others_cores": figure.others_cores}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
