"""`<package> serve`: a run's model behind HTTP, with a page to try it. Managed by the copier-lightning template.

    <package> serve [--run_name NAME] [--config FILE ...] [--host 127.0.0.1] [--port 8000] [--engine onnx]

The run is the one `fit` with the same options trains (as for `predict-files`), answered by its
best checkpoint or, with `--engine onnx`, its export; every sample goes through the data module's
`serving_preprocessing`, the function its training features use (kit/deployment/predictor.py).

- `GET /`: the page (serve_page.html: plain HTML and a little JavaScript, no build step): a sample
  in (typed, one of the examples, or, for a row of n x n numbers such as the digits' 8 x 8 pixels,
  drawn on a grid), the prediction, the model's outputs and the latency out.
- `POST /predict` with `{"inputs": [sample, ...]}`, each sample as `serving_preprocessing` takes it
  (the digits example: a row of 64 numbers; the fine-tune example: a text); the answer is
  `{"predictions": [{"prediction": i, "outputs": [...]}, ...], "batch_size": n, "latency_ms": t}`,
  `prediction` being the largest output's index, as in `predict-files`' CSV, and `batch_size` how
  many samples the model ran together with these.
- `GET /health` (the process answers), `GET /ready` (the model is loaded and taking requests),
  `GET /info` (the run, what answers, the limits), `GET /examples` (the data's serving examples,
  data/serving-example.*, which the page offers to try).

Requests that arrive together run as one batch (`MicroBatcher`: up to --max_batch_size samples,
the first waiting at most --max_wait_ms for others). A bad request gets a 4xx and one line naming
what is wrong (`{"error": ...}`: a body that is not JSON 400, a missing `inputs` or a sample of the
wrong shape or type 422, too many bytes or samples 413), and the server keeps serving. SIGTERM (a
SLURM job's end) or Ctrl-C stops taking connections, finishes the requests in flight and exits 0.

Built on FastAPI with uvicorn (the `serve` extra): the kept ASGI stack, one process whose async I/O
lets no slow client hold the others. LitServe, Lightning's own model server, would bring batching
too, but it runs inference in worker processes it spawns: a second import of the project on every
start and a process tree that a job's SIGTERM must reach. The batching here is one small class.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (`request:
# Request`) as objects, and Request is imported inside build_app, where FastAPI is known to be installed.
import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batch_inference import InputError, serving_examples
from .predictor import add_predictor_options

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI

    from .predictor import Predictor

PAGE = Path(__file__).with_name("serve_page.html")


class MicroBatcher:
    """Runs the requests that arrive together as one batch of at most `max_batch_size` samples.

    The first request waits at most `max_wait_s` for others; a request that would overfill the batch,
    or whose inputs have another shape than the batch's, starts the next one. The model runs in a
    worker thread (torch releases the interpreter lock), so requests keep arriving meanwhile.
    """

    def __init__(self, predict: Callable[["torch.Tensor"], "torch.Tensor"], max_batch_size: int, max_wait_s: float):
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.held: tuple | None = None  # the request that did not fit the last batch

    async def run(self, inputs: "torch.Tensor") -> "tuple[torch.Tensor, int]":
        """The model's outputs for `inputs` (at most max_batch_size rows), and the size of the batch they ran in."""
        answer = asyncio.get_running_loop().create_future()
        await self.queue.put((inputs, answer))
        return await answer

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [self.held or await self.queue.get()]
            self.held = None
            count, deadline = len(pending[0][0]), loop.time() + self.max_wait_s
            while count < self.max_batch_size and (wait := deadline - loop.time()) > 0:
                try:
                    request = await asyncio.wait_for(self.queue.get(), wait)
                except asyncio.TimeoutError:  # noqa: UP041 - on Python 3.10 it is not the builtin one
                    break
                if count + len(request[0]) > self.max_batch_size or request[0].shape[1:] != pending[0][0].shape[1:]:
                    self.held = request  # overfull, or inputs of another shape (texts of another length): next batch
                    break
                pending.append(request)
                count += len(request[0])
            await self._answer(pending)

    async def _answer(self, pending: "list[tuple[torch.Tensor, asyncio.Future]]") -> None:
        import torch

        try:
            outputs = await asyncio.to_thread(self.predict, torch.cat([inputs for inputs, _ in pending]))
        except Exception as error:  # noqa: BLE001 - the requests get the error; the server keeps serving
            for _, answer in pending:
                if not answer.done():
                    answer.set_exception(error)
            return
        start = 0
        for inputs, answer in pending:
            if not answer.done():  # a client that left has a cancelled future
                answer.set_result((outputs[start : start + len(inputs)], len(outputs)))
            start += len(inputs)


class BadRequest(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def request_samples(body: bytes, max_samples: int) -> list:
    """The request's samples; BadRequest (400, 413, 422) naming what is wrong with the body."""
    try:
        payload = json.loads(body)
    except ValueError as bad:  # json's JSONDecodeError and a body that is not UTF-8
        raise BadRequest(400, f"the body is not JSON: {bad}") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise BadRequest(422, 'the body must be a JSON object with "inputs": a list of samples')
    samples = payload["inputs"]
    if not isinstance(samples, list) or not samples:
        raise BadRequest(422, '"inputs" must be a non-empty list of samples')
    if len(samples) > max_samples:
        raise BadRequest(413, f"{len(samples)} samples in one request; at most {max_samples} (--max_batch_size)")
    return samples


def build_app(predictor: "Predictor", max_batch_size: int, max_wait_s: float, max_request_bytes: int) -> "FastAPI":
    """The server's endpoints around `predictor` (see the module's docstring)."""
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    batcher = MicroBatcher(predictor.predict, max_batch_size, max_wait_s)
    state = {"ready": False, "answered": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ARG001 - the signature FastAPI calls
        batching = asyncio.create_task(batcher.serve_forever())
        state["ready"] = True
        yield
        state["ready"] = False
        batching.cancel()

    app = FastAPI(title=f"run {predictor.run.name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.answered = state  # read by serve_main when it stops

    def refused(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    try:
        examples = serving_examples()[:10]  # read once: the page offers them to try
    except InputError:  # an unreadable examples file: the page offers none; serving does not depend on it
        examples = []

    @app.get("/examples")
    async def offered_examples() -> dict:
        return {"examples": examples}

    @app.get("/info")
    async def info() -> dict:
        return {
            "run": predictor.run.name,
            "answered_by": predictor.source,
            "max_batch_size": max_batch_size,
            "max_request_bytes": max_request_bytes,
        }

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        started = time.perf_counter()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_request_bytes:
            return refused(413, f"the body has {declared} bytes; at most {max_request_bytes} (--max_request_bytes)")
        body = b""
        async for chunk in request.stream():  # read as it comes: a slow client holds only its own request
            body += chunk
            if len(body) > max_request_bytes:
                return refused(413, f"the body has more than {max_request_bytes} bytes (--max_request_bytes)")
        try:
            samples = request_samples(body, max_batch_size)
            inputs = await asyncio.to_thread(_preprocessed, predictor.preprocess, samples)
        except BadRequest as bad:
            return refused(bad.status, str(bad))
        try:
            outputs, batch_size = await batcher.run(inputs)
        except Exception as error:  # noqa: BLE001 - one line for the client; the server keeps serving
            return refused(500, f"the model failed on this input: {type(error).__name__}: {error}".splitlines()[0])
        state["answered"] += 1
        outputs = outputs.reshape(len(outputs), -1).to(torch.float32)
        return {
            "predictions": [{"prediction": int(row.argmax()), "outputs": row.tolist()} for row in outputs],
            "batch_size": batch_size,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    return app


def _preprocessed(preprocess: Callable, samples: list) -> "torch.Tensor":
    """The samples as model inputs; BadRequest (422) with the preprocessing's own words when they do not fit."""
    import torch

    try:
        inputs = preprocess(samples)
    except (ValueError, TypeError) as bad:
        raise BadRequest(422, f"inputs: {bad}".splitlines()[0]) from None
    if not isinstance(inputs, torch.Tensor) or len(inputs) != len(samples):
        raise BadRequest(422, f"inputs: the preprocessing made {len(inputs)} model inputs of {len(samples)} samples")
    return inputs


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve a run's model over HTTP, with a page to try it at /. Other options go to the config "
        "parser (--config, --run_name, ...), as for `fit`.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    add_predictor_options(parser)
    parser.add_argument("--max_batch_size", type=int, default=32, help="samples run together, at most")
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="how long a request waits for others")
    parser.add_argument("--max_request_bytes", type=int, default=1_000_000, help="a larger body gets a 413")
    args, config_args = parser.parse_known_args(argv)
    if args.max_batch_size < 1 or args.max_wait_ms < 0 or args.max_request_bytes < 1:
        print("error: --max_batch_size and --max_request_bytes must be at least 1, --max_wait_ms at least 0",
              file=sys.stderr)  # fmt: skip
        return 2
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port}: a port is a number from 0 to 65535", file=sys.stderr)
        return 2
    try:
        import uvicorn
    except ModuleNotFoundError:
        print('error: serving needs FastAPI and uvicorn: pip install -e ".[serve]"', file=sys.stderr)
        return 2
    from .predictor import PredictorError, load_predictor

    try:
        predictor = load_predictor(config_args, args.engine, args.ckpt_path)
    except PredictorError as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    app = build_app(predictor, args.max_batch_size, args.max_wait_ms / 1000, args.max_request_bytes)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    stopped_by: list[str] = []
    # uvicorn finishes the requests in flight on SIGTERM, then raises the signal again for the handler
    # it found: this one notes it instead of letting the default handler kill the process.
    signal.signal(signal.SIGTERM, lambda number, frame: stopped_by.append("SIGTERM"))
    # On every interface (a job on a cluster node): the node's name is what a colleague types.
    shown_host = socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host
    print(f"Serving run '{predictor.run.name}' ({predictor.source}) at http://{shown_host}:{args.port}/ "
          "(POST /predict; Ctrl-C or SIGTERM stops it)", flush=True)  # fmt: skip
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises Ctrl-C again after its graceful shutdown
        stopped_by.append("SIGINT")
    except SystemExit:  # uvicorn exits when it cannot listen, after logging why
        pass
    if not server.started:
        print(f"error: could not listen on {args.host}:{args.port} (in use? another --port)", file=sys.stderr)
        return 1
    answered = app.state.answered["answered"]
    print(f"Stopped{' on ' + stopped_by[0] if stopped_by else ''} after answering {answered} request(s).")
    return 0
