"""`serve`: a trained run's model behind HTTP on the loopback address, and its page in a real headless
browser (Debian's chromium, driven by Playwright through its `executable_path`)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from servers import get, post, serving

from template_dev import TOP, run

# Screenshots of the page, kept after the run (a test artifact; .gitignore'd).
ARTIFACTS = TOP / "test-artifacts"


@pytest.fixture(scope="module")
def trained(example_project, example_command, tmp_path_factory):
    """A trained example run, and what `predict-files` answers for the serving example's rows."""
    project, _ = example_project
    runs = tmp_path_factory.mktemp("serve-runs")
    env = {**os.environ, "RUNS_DIR": str(runs)}
    run([*example_command, "fit", "--trainer.max_epochs=2", "--run_name", "served"], cwd=project, env=env)
    output = runs / "predictions.csv"
    samples = project / "data" / "serving-example.csv"
    run([*example_command, "predict-files", str(samples), "--output", str(output), "--run_name", "served"],
        cwd=project, env=env)  # fmt: skip
    with open(output, newline="") as stream:
        expected = [
            (int(row["prediction"]), [float(row[f"output_{i}"]) for i in range(10)]) for row in csv.DictReader(stream)
        ]
    lines = [line for line in samples.read_text().splitlines() if line.strip() and not line.startswith("#")]
    rows = [[float(value) for value in line.split(",")] for line in lines]
    assert len(rows) == len(expected) == 10
    return project, env, rows, expected


def test_served_answers_are_predict_files_answers_and_requests_arriving_together_run_as_one_batch(
    trained, example_command
) -> None:
    project, env, rows, expected = trained
    with serving(example_command, project, env, "--max_batch_size", "8", "--max_wait_ms", "300") as (url, _):
        with ThreadPoolExecutor(len(rows)) as clients:
            answers = list(clients.map(lambda row: post(url, {"inputs": [row]}), rows))
        status, info = get(f"{url}/info")
    assert status == 200 and info["run"] == "served" and info["answered_by"].endswith(".ckpt")
    assert [code for code, _ in answers] == [200] * len(rows), answers
    for (_, answer), (prediction, outputs) in zip(answers, expected, strict=True):
        (served,) = answer["predictions"]
        assert served["prediction"] == prediction
        assert max(abs(a - b) for a, b in zip(served["outputs"], outputs, strict=True)) < 1e-4
    batch_sizes = [answer["batch_size"] for _, answer in answers]
    assert 1 < max(batch_sizes) <= 8, batch_sizes  # 10 requests at once: run together, 8 at most per batch


def test_a_bad_request_gets_one_clear_line_and_the_server_keeps_serving(trained, example_command) -> None:
    project, env, rows, expected = trained
    too_many = {"inputs": [rows[0]] * 5}
    cases = [
        (b"{not json", 400, "the body is not JSON"),
        (b'{"samples": []}', 422, 'the body must be a JSON object with "inputs"'),
        (b'{"inputs": []}', 422, '"inputs" must be a non-empty list of samples'),
        (b'{"inputs": [[1, 2, 3]]}', 422, "inputs: expected rows of 64 pixel values (0-16), got an array of shape"),
        (b'{"inputs": ["a seven"]}', 422, "inputs: could not convert string to float"),
        (json.dumps(too_many).encode(), 413, "5 samples in one request; at most 4 (--max_batch_size)"),
        (b'{"inputs": [' + b"0," * 2000 + b"0]}", 413, "at most 3000 (--max_request_bytes)"),
    ]
    options = ("--max_batch_size", "4", "--max_request_bytes", "3000")
    with serving(example_command, project, env, *options) as (url, server):
        for body, status, message in cases:
            code, answer = post(url, body)
            assert (code, set(answer)) == (status, {"error"}) and message in answer["error"], (body[:40], answer)
            assert "\n" not in answer["error"]
        # A client that sends half its body and stalls holds only its own request.
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n" + b'{"inputs": [[0')
            started = time.monotonic()
            code, answer = post(url, {"inputs": [rows[0]]})
            waited = time.monotonic() - started
        assert code == 200 and answer["predictions"][0]["prediction"] == expected[0][0]
        assert waited < 5, waited
        assert get(f"{url}/health") == (200, {"status": "ok"})
        assert server.poll() is None


def test_the_batcher_runs_requests_of_one_shape_together_and_holds_the_rest_for_the_next_batch(example_package):
    import asyncio

    import torch
    from digits_mlp.kit.deployment.model_server import MicroBatcher

    batches: list[tuple[int, ...]] = []

    def predict(batch: torch.Tensor) -> torch.Tensor:
        batches.append(tuple(batch.shape))
        return batch.sum(dim=1, keepdim=True)

    async def four_requests_at_once() -> list:
        batcher = MicroBatcher(predict, max_batch_size=4, max_wait_s=0.5)
        batching = asyncio.create_task(batcher.serve_forever())
        requests = [torch.ones(1, 3), torch.ones(2, 3), torch.ones(1, 5), torch.full((2, 3), 2.0)]
        answers = await asyncio.gather(*(batcher.run(inputs) for inputs in requests))
        batching.cancel()
        return answers

    answers = asyncio.run(four_requests_at_once())
    # Rows of 3 together (3 of at most 4), the row of 5 alone (another shape), then the pair held behind it.
    assert batches == [(3, 3), (1, 5), (2, 3)]
    assert [(outputs.flatten().tolist(), size) for outputs, size in answers] == [
        ([3.0], 3),
        ([3.0, 3.0], 3),
        ([5.0], 1),
        ([6.0, 6.0], 2),
    ]


def test_a_run_that_cannot_serve_is_refused_in_one_line(trained, example_command) -> None:
    project, env, _, _ = trained
    done = run([*example_command, "serve", "--run_name", "never-trained"], cwd=project, env=env, check=False)
    assert done.returncode == 2, done
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "never-trained" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_finishes_the_request_in_flight_and_exits_0(trained, example_command) -> None:
    project, env, rows, expected = trained
    answered: list = []
    with serving(example_command, project, env, "--max_wait_ms", "2000") as (url, server):
        client = threading.Thread(target=lambda: answered.append(post(url, {"inputs": [rows[1]]})))
        client.start()
        time.sleep(0.7)  # the request waits in the batcher for others (up to 2 s)
        server.send_signal(signal.SIGTERM)
        client.join(timeout=30)
        stdout, stderr = server.communicate(timeout=60)
    assert answered and answered[0][0] == 200, answered
    assert answered[0][1]["predictions"][0]["prediction"] == expected[1][0]
    assert server.returncode == 0, (stdout, stderr)
    assert "Stopped on SIGTERM after answering 1 request(s)." in stdout, stdout
    assert "Traceback" not in stderr, stderr


def test_the_load_test_holds_the_served_model_to_the_budget_bounded_in_count_and_time(
    trained, example_command, tmp_path
) -> None:
    project, env, _, _ = trained
    shipped = (project / "configs" / "inference-budget.yaml").read_text()
    assert "served:" in shipped and "p95_ms: 50.0" in shipped
    # A roomy p95 here: this machine runs other tests meanwhile; the shipped 50 ms is the researcher's.
    roomy, strict = tmp_path / "roomy.yaml", tmp_path / "strict.yaml"
    roomy.write_text(shipped.replace("p95_ms: 50.0", "p95_ms: 5000.0"))
    strict.write_text(shipped.replace("p95_ms: 50.0", "p95_ms: 0.001"))
    test = [*example_command, "load-test", "--run_name", "served"]
    done = run([*test, "--budget", str(roomy), "--requests", "200"], cwd=project, env=env)
    assert "8 clients, 200 requests answered" in done.stdout and ", 0 errors;" in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith("Within budget.")
    record = json.loads((Path(env["RUNS_DIR"]) / "served" / "load-test.json").read_text())
    assert (record["answered"], record["errors"], record["verdict"]) == (200, 0, "within budget")
    assert 0 < record["p50_ms"] <= record["p95_ms"] <= record["p99_ms"] and record["requests_per_second"] > 0
    over = run([*test, "--budget", str(strict), "--requests", "50"], cwd=project, env=env, check=False)
    assert over.returncode == 1 and "Over budget: p95 " in over.stdout and "over the budget's 0.001 ms" in over.stdout
    bounded = run([*test, "--budget", str(roomy), "--requests", "1000000", "--seconds", "1"], cwd=project, env=env)
    answered = json.loads((Path(env["RUNS_DIR"]) / "served" / "load-test.json").read_text())
    assert 0 < answered["answered"] < 1000000 and answered["seconds"] < 5, (bounded.stdout, answered)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (scripts/test.sh "
                    "installs it as root: apt-get install chromium)")  # fmt: skip
def test_the_page_predicts_a_digit_in_a_real_browser(trained, example_command) -> None:
    from playwright.sync_api import sync_playwright

    project, env, rows, expected = trained
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with serving(example_command, project, env) as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(url)
        page.wait_for_function("document.getElementById('about').textContent.includes(\"Run 'served'\")")
        page.wait_for_selector("#grid", state="visible")  # 64 numbers a sample: an 8 x 8 square to draw on
        offered = page.locator("#examples button").count()
        page.click("#examples button:text-is('3')")  # the third serving example
        typed = [float(value) for value in page.input_value("#sample").split(",")]
        page.click("#predict")
        page.wait_for_selector("#result", state="visible")
        shown = page.inner_text("#prediction")
        cells = page.locator("#outputs tr").count()
        latency = page.inner_text("#latency")
        page.screenshot(path=ARTIFACTS / "serve-page.png", full_page=True)
        # Drawn by hand: clear the square, one stroke down its middle column, predict.
        page.click("#clear")
        box = page.locator("#grid").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.1)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.9, steps=12)
        page.mouse.up()
        drawn = [float(value) for value in page.input_value("#sample").split(",")]
        page.click("#predict")
        page.wait_for_selector("#result", state="visible")
        drawn_answer = page.inner_text("#prediction")
        page.screenshot(path=ARTIFACTS / "serve-page-drawn.png", full_page=True)
        page.fill("#sample", "1, 2, 3")
        page.click("#predict")
        page.wait_for_function("document.getElementById('error').textContent !== ''")
        refusal = page.inner_text("#error")
        hidden = page.locator("#result").is_hidden()
        page.screenshot(path=ARTIFACTS / "serve-page-refusal.png", full_page=True)
        browser.close()
    assert offered == 10 and typed == rows[2], (offered, typed)
    assert shown == str(expected[2][0]) and cells == 10 and "ms" in latency, (shown, cells, latency)
    # The stroke painted full ink (16, the examples' largest value) down column 4 of 8, nothing else.
    painted = {index for index, value in enumerate(drawn) if value}
    assert len(drawn) == 64 and {drawn[i] for i in painted} == {16.0} and {i % 8 for i in painted} == {4}, drawn
    assert len(painted) >= 6 and drawn_answer in [str(digit) for digit in range(10)], (drawn, drawn_answer)
    assert "expected rows of 64 pixel values" in refusal and hidden, refusal
    # The refused request's 422 is the only error the browser may log (it reports failed fetches itself).
    assert [p for p in problems if "422" not in p] == [], problems
