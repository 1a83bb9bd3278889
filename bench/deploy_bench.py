"""Deployment benchmark: PyTorch vs ONNX Runtime (fp32, int8) prediction, and the HTTP service under load.

Everything is measured in one run on one machine, so the ratios compare like with like:

1. Model: ``--model DIR`` (a trained bundle), else a MiniLM classifier is trained on ``examples/data/trec``
   (3 epochs, lr 1e-4, batch 32, max_length 128) into ``bench/work/deploy/model``.
2. Export: ``textclf.deploy.export.export_model`` to ONNX fp32 and ONNX int8 (each with its parity check against
   PyTorch, and the int8 accuracy change on the TREC test set).
3. Prediction throughput on the TREC test set (500 texts, batch 64, tokenization included):
   PyTorch fp32 eager, PyTorch with the default autocast (bf16 where the CPU has it), ONNX fp32, ONNX int8.
   The configurations alternate over ``--rounds`` rounds so that a noisy machine slows them alike; the median
   round is reported. Accuracy on the same set and the model file size alongside.
4. Service under load: ``textclf serve`` in a subprocess on 127.0.0.1, a bounded closed-loop load generator
   (``--concurrency`` keep-alive connections, ``--requests`` single short texts in all, raw HTTP/1.1 over asyncio
   so that the client costs little CPU), with micro-batching on and off: throughput, p50/p99 latency, errors and
   the server's own batch-size statistics.
5. Schemathesis against the service's OpenAPI schema (all checks; 413 accepted as a rejection status).

    python -m bench.deploy_bench                          # trains if needed; writes bench/results/deploy.json
    python -m bench.deploy_bench --model /tmp/trec/out/best --requests 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work" / "deploy"
RESULTS = ROOT / "bench" / "results"
TREC = ROOT / "examples" / "data" / "trec"

SCHEMATHESIS_CONFIG = """\
[checks.negative_data_rejection]
# textclf answers over-limit requests (too many texts, a too long text) with 413, which is a rejection too.
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""


def log(message: str) -> None:
    print(f"[deploy_bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ==================================================================================================== model


def train_model(output: Path) -> Path:
    """Fine-tune MiniLM on TREC (the getting-started recipe) and return its best/ folder."""
    import textclf

    log(f"training a MiniLM classifier on {TREC} into {output} (3 epochs; minutes on a laptop CPU)")
    data = textclf.load_dataset(TREC)
    trainer = textclf.Trainer(model="minilm", data=data, output_dir=output, overwrite=True, progress=False,
                              config=textclf.TrainConfig(epochs=3, lr=1e-4, batch_size=32, max_length=128))
    result = trainer.fit()
    log(f"trained: test accuracy {result.test['accuracy']:.4f}")
    return output / "best"


def export_all(model: Path) -> dict[str, dict]:
    from textclf.deploy.export import export_model

    exports = {}
    for name, quantize in (("onnx", None), ("int8", "int8")):
        folder = WORK / f"export-{name}"
        result = export_model(model, folder, format="onnx", quantize=quantize, data=TREC / "test.csv",
                              overwrite=True, log=lambda line: log("  " + line))
        exports[name] = {"folder": str(folder), "file": result.model_file.name, "size_bytes": result.size_bytes,
                         "export_seconds": round(result.seconds, 1), "parity": result.parity.to_dict()}
    return exports


# ==================================================================================================== prediction


def predict_throughput(model: Path, exports: dict, rounds: int) -> dict:
    """Median texts/s over interleaved rounds, accuracy and file size of each configuration."""
    import torch

    from textclf.config import DataConfig
    from textclf.data.readers import read_split
    from textclf.deploy.predict import Predictor

    split = read_split(TREC / "test.csv", "test", DataConfig())
    texts, labels = list(split.texts), list(split.labels)
    configs = {
        "PyTorch fp32 (eager)": (Predictor.from_pretrained(model, backend="torch", device="cpu", precision="fp32"),
                                 model / "model.safetensors"),
        "PyTorch autocast (auto)": (Predictor.from_pretrained(model, backend="torch", device="cpu"),
                                    model / "model.safetensors"),
        "ONNX Runtime fp32": (Predictor.from_pretrained(exports["onnx"]["folder"], backend="onnx"),
                              Path(exports["onnx"]["folder"]) / exports["onnx"]["file"]),
        "ONNX Runtime int8": (Predictor.from_pretrained(exports["int8"]["folder"], backend="onnx"),
                              Path(exports["int8"]["folder"]) / exports["int8"]["file"]),
    }
    timings: dict[str, list[float]] = {name: [] for name in configs}
    accuracy = {}
    for name, (predictor, _) in configs.items():  # warm-up, and accuracy
        predictions = predictor.predict(texts)
        accuracy[name] = sum(p.label == gold for p, gold in zip(predictions, labels)) / len(labels)
    for round_ in range(rounds):
        for name, (predictor, _) in configs.items():
            started = time.perf_counter()
            predictor.predict(texts)
            timings[name].append(time.perf_counter() - started)
        log(f"  prediction round {round_ + 1}/{rounds}: " + ", ".join(
            f"{name} {len(texts) / timings[name][-1]:.0f}/s" for name in configs))
    base = "PyTorch fp32 (eager)"
    rows = {}
    for name, (predictor, file) in configs.items():
        median = statistics.median(timings[name])
        rows[name] = {"texts_per_second": len(texts) / median,
                      "best_texts_per_second": len(texts) / min(timings[name]),
                      "speedup_vs_fp32_eager": statistics.median(timings[base]) / median,
                      "accuracy": accuracy[name], "file_bytes": file.stat().st_size, **predictor.backend.describe()}
    for row in rows.values():
        row["size_ratio_vs_fp32"] = rows[base]["file_bytes"] / row["file_bytes"]
    return {"num_texts": len(texts), "batch_size": 64, "rounds": rounds, "torch_threads": torch.get_num_threads(),
            "results": rows}


# ==================================================================================================== service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "textclf", "serve", "--model", model, "--port", str(port), "--no-access-log",
               "--log-level", "warning", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log_file = WORK / f"server-{port}.log"
    with open(log_file, "w") as output:  # a file, not a pipe nobody reads, which could fill up and block the server
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_file.read_text()}")
        try:
            status, _ = asyncio.run(_request("127.0.0.1", port, "GET", "/health"))
            if status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not become healthy in 120 s")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


async def _request(host: str, port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_http(method, path, body, close=True))
        await writer.drain()
        return await _read_response(reader)
    finally:
        writer.close()


def _http(method: str, path: str, body: bytes, close: bool = False) -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return status, await reader.readexactly(length)


async def _load(port: int, texts: list[str], total: int, concurrency: int) -> dict:
    """Closed loop: ``concurrency`` keep-alive clients send one text each, back to back, ``total`` in all."""
    bodies = [json.dumps({"text": text}).encode() for text in texts]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0

    async def client() -> None:
        nonlocal issued
        reader = writer = None
        while issued < total:
            index = issued
            issued += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                started = time.perf_counter()
                writer.write(_http("POST", "/classify", bodies[index % len(bodies)]))
                await writer.drain()
                status, _ = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
            except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"requests": total, "ok": total - sum(errors.values()), "errors": errors, "seconds": seconds,
            "requests_per_second": total / seconds, "p50_ms": percentile(0.50), "p90_ms": percentile(0.90),
            "p99_ms": percentile(0.99), "max_ms": latencies[-1] * 1000 if latencies else float("nan")}


def load_test(model: str, texts: list[str], requests: int, concurrency: int, batching: bool) -> dict:
    port = free_port()
    process = start_server(model, port, *([] if batching else ["--no-batching"]))
    try:
        asyncio.run(_load(port, texts, min(200, requests), concurrency))  # warm-up (not counted)
        _, before = asyncio.run(_request("127.0.0.1", port, "GET", "/stats"))
        result = asyncio.run(_load(port, texts, requests, concurrency))
        _, after = asyncio.run(_request("127.0.0.1", port, "GET", "/stats"))
    finally:
        exit_code = stop_server(process)
    before, after = json.loads(before), json.loads(after)
    batches = after["batches"] - before["batches"]
    result.update(batching=batching, model_calls=batches,
                  mean_batch_size=(after["texts"] - before["texts"]) / batches if batches else 0.0,
                  max_batch_size=after["max_batch_size"], server_exit_code=exit_code)
    return result


def schemathesis_run(model: str, max_examples: int) -> dict:
    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    if not Path(st).exists():
        return {"skipped": "schemathesis is not installed (pip install schemathesis)"}
    config = WORK / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    port = free_port()
    process = start_server(model, port)
    try:
        started = time.time()
        run = subprocess.run([st, "--config-file", str(config), "run", f"http://127.0.0.1:{port}/openapi.json",
                              "--checks", "all", "--max-examples", str(max_examples)],
                             capture_output=True, text=True, timeout=900)
    finally:
        stop_server(process)
    output = run.stdout + run.stderr
    summary = [line for line in output.splitlines() if "generated" in line or "issues" in line or "failure" in line]
    (WORK / "schemathesis.log").write_text(output)
    return {"exit_code": run.returncode, "passed": run.returncode == 0, "server_errors": output.count("ST100"),
            "summary": summary[-3:], "seconds": round(time.time() - started, 1), "max_examples": max_examples}


# ==================================================================================================== report


def markdown(results: dict) -> str:
    lines = ["| configuration | texts/s (median) | vs PyTorch fp32 | accuracy | model file | smaller |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in results["predict"]["results"].items():
        lines.append(f"| {name} | {row['texts_per_second']:.0f} | {row['speedup_vs_fp32_eager']:.2f}x | "
                     f"{row['accuracy']:.2%} | {row['file_bytes'] / 1e6:.1f} MB | {row['size_ratio_vs_fp32']:.2f}x |")
    lines += ["", "| service | requests | errors | req/s | p50 ms | p99 ms | mean batch | max batch |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in results["service"].items():
        lines.append(f"| {name} | {row['requests']} | {sum(row['errors'].values())} | "
                     f"{row['requests_per_second']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['mean_batch_size']:.1f} | {row['max_batch_size']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deploy_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="trained model folder (default: train one on TREC)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved prediction rounds (default 5)")
    parser.add_argument("--requests", type=int, default=10_000, help="requests per load test (default 10000)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--serve-models", default="int8,torch",
                        help="comma-separated models to load-test: int8 (ONNX int8 export), onnx, torch")
    parser.add_argument("--schemathesis-examples", type=int, default=100, help="0 skips the schemathesis run")
    parser.add_argument("--output", type=Path, default=RESULTS / "deploy.json")
    args = parser.parse_args(argv)

    WORK.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = args.model or (WORK / "model" / "best")
    if not (model / "model.safetensors").is_file():
        model = train_model(WORK / "model")
    import platform

    import torch

    results: dict = {"model": str(model), "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                      "torch": torch.__version__}}
    log("exporting ONNX fp32 and int8 (with parity checks)")
    results["exports"] = export_all(model)
    log("prediction throughput on the TREC test set")
    results["predict"] = predict_throughput(model, results["exports"], args.rounds)

    from textclf.data.readers import read_split

    texts = list(read_split(TREC / "test.csv", "test").texts)
    folders = {"torch": str(model), "onnx": results["exports"]["onnx"]["folder"],
               "int8": results["exports"]["int8"]["folder"]}
    results["service"] = {}
    for name in filter(None, args.serve_models.split(",")):
        for batching in (True, False):
            label = f"{name}, batching {'on' if batching else 'off'}"
            log(f"load test: {label} ({args.requests} requests, {args.concurrency} clients)")
            row = load_test(folders[name], texts, args.requests, args.concurrency, batching)
            results["service"][label] = row
            log(f"  {row['requests_per_second']:.0f} req/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                f"errors {row['errors'] or 0}, mean batch {row['mean_batch_size']:.1f}")
        on, off = results["service"][f"{name}, batching on"], results["service"][f"{name}, batching off"]
        on["speedup_vs_batching_off"] = on["requests_per_second"] / off["requests_per_second"]
    if args.schemathesis_examples:
        log(f"schemathesis ({args.schemathesis_examples} examples per operation, all checks)")
        results["schemathesis"] = schemathesis_run(folders["int8"], args.schemathesis_examples)
        log(f"  {results['schemathesis']}")
    results["seconds"] = round(time.time() - started, 1)
    results["table"] = markdown(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    for name in filter(None, args.serve_models.split(",")):
        speedup = results["service"][f"{name}, batching on"]["speedup_vs_batching_off"]
        print(f"{name}: batching on / off = {speedup:.2f}x")
    log(f"wrote {args.output} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
