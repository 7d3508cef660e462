"""Importer and collector throughput.

    .venv/bin/python benchmarks/bench_import_formats.py [--rollouts 100000] [--spans 200000]

(1) ``manta import`` of N OpenAI-message rollouts (about 10 messages each, with tool calls)
against the same traces already in Manta's JSON Lines format, side by side in one process,
each into an emptied database, alternated ``--repeat`` times keeping the best of each;
prints the ratio openai / native (target <= 2x).
(2) ``manta collect`` (the :class:`Collector`, in this process) receiving OTLP/HTTP protobuf
from 4 concurrent exporter processes, each posting requests of 512 spans (the
BatchSpanProcessor's batch size) of GenAI agent traces; prints spans/s from the first request
to the last trace written (target >= 5,000) and the spans sent against the traces and spans
stored (no loss).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import DATA_ROOT, bench_settings  # noqa: E402
from manta_lib.collector import Collector  # noqa: E402
from manta_lib.importers import Hierarchy, import_files  # noqa: E402
from manta_lib.importers.openai import rollout_trace  # noqa: E402
from manta_lib.ingest import import_jsonl  # noqa: E402
from manta_lib.store import Store  # noqa: E402

RUN = "bench_import"
EXPORTERS = 4
SPANS_PER_REQUEST = 512
SPANS_PER_TRACE = 4  # invoke_agent, chat, execute_tool, chat


def rollout(n: int) -> dict[str, Any]:
    call = {
        "id": f"call_{n}",
        "type": "function",
        "function": {"name": "python", "arguments": json.dumps({"code": f"print({n} * 7)"})},
    }
    messages = [
        {"role": "system", "content": "You are a math agent. Think step by step."},
        {"role": "user", "content": f"Problem {n}: what is {n} times seven, plus one?"},
        {"role": "assistant", "content": "I will compute it.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{n}", "content": str(n * 7)},
        {"role": "assistant", "content": f"{n} * 7 = {n * 7}. Now add one."},
        {"role": "user", "content": "Continue."},
        {"role": "assistant", "content": "", "tool_calls": [{**call, "id": f"call_{n}b"}]},
        {"role": "tool", "tool_call_id": f"call_{n}b", "content": "Error: timeout"},
        {"role": "assistant", "content": f"The answer is {n * 7 + 1}."},
        {"role": "user", "content": "Thanks."},
    ]
    return {
        "messages": messages,
        "reward": n % 2,
        "model": "qwen2.5-7b-instruct",
        "usage": {"prompt_tokens": 900, "completion_tokens": 120},
        "metadata": {"run_id": RUN, "step": n // 1000, "datapoint_id": f"dp_{n % 500}"},
    }


def write_inputs(rollouts: int, folder: Path) -> tuple[Path, Path]:
    """The rollouts as OpenAI-message lines, and the same traces in Manta's format."""
    folder.mkdir(parents=True, exist_ok=True)
    openai_path = folder / f"openai_{rollouts}.jsonl"
    native_path = folder / f"native_{rollouts}.jsonl"
    if openai_path.exists() and native_path.exists():
        return openai_path, native_path
    with openai_path.open("w") as openai_out, native_path.open("w") as native_out:
        for n in range(rollouts):
            line = json.dumps(rollout(n))
            openai_out.write(line + "\n")
            native_out.write(
                json.dumps(rollout_trace(json.loads(line), Hierarchy(), line.encode())) + "\n"
            )
    return openai_path, native_path


def empty(store: Store) -> None:
    store.command("TRUNCATE TABLE {db}.traces")
    store.command("TRUNCATE TABLE {db}.spans")


def bench_import(args: argparse.Namespace) -> None:
    openai_path, native_path = write_inputs(args.rollouts, DATA_ROOT / "import_formats")
    native_times: list[float] = []
    openai_times: list[float] = []
    native_cpu: list[float] = []
    openai_cpu: list[float] = []
    with Store.open(bench_settings("import_formats")) as store:
        for _ in range(max(1, args.repeat)):
            empty(store)
            cpu = time.process_time()
            report = import_jsonl([native_path], store=store, progress=False)
            native_cpu.append(time.process_time() - cpu)
            assert report.ok and report.traces_loaded == args.rollouts, report.summary()
            native_times.append(report.seconds)
            spans = report.spans_loaded
            empty(store)
            cpu = time.process_time()
            report = import_files([openai_path], store=store)
            openai_cpu.append(time.process_time() - cpu)
            assert report.ok and report.traces_loaded == args.rollouts, report.summary()
            assert report.spans_loaded == spans
            openai_times.append(report.seconds)
    native_s, openai_s = min(native_times), min(openai_times)
    print(f"(1) import of {args.rollouts:,} rollouts ({spans:,} spans), best of {args.repeat}:")
    print(f"    native JSON Lines : {native_s:7.2f} s  {args.rollouts / native_s:9,.0f} traces/s")
    print(f"    OpenAI messages   : {openai_s:7.2f} s  {args.rollouts / openai_s:9,.0f} traces/s")
    print(f"    ratio openai/native: {openai_s / native_s:.2f}x (target <= 2x)")
    print(
        f"    CPU time native {min(native_cpu):.2f} s, openai {min(openai_cpu):.2f} s: "
        f"{min(openai_cpu) / min(native_cpu):.2f}x; load average {os.getloadavg()[0]:.1f}"
    )


def _exporter(endpoint: str, worker: int, requests: int, ready: Any, go: Any) -> None:
    import httpx

    from tests.lib.importers.otlp_builders import genai_agent_trace, request, to_protobuf

    traces_per_request = SPANS_PER_REQUEST // SPANS_PER_TRACE
    bodies = []
    for r in range(requests):
        base = (worker * 1_000_000 + r * traces_per_request) + 1
        spans = [s for t in range(traces_per_request) for s in genai_agent_trace(base + t)]
        bodies.append(to_protobuf(request(spans, {"service.name": "bench", "manta.run_id": RUN})))
    ready.put(worker)
    go.wait()
    with httpx.Client(timeout=60) as client:
        for body in bodies:
            response = client.post(
                endpoint, content=body, headers={"Content-Type": "application/x-protobuf"}
            )
            assert response.status_code == 200, response.text


def bench_collector(args: argparse.Namespace) -> None:
    settings = bench_settings("collector")
    with Store.open(settings) as store:
        empty(store)
    requests = max(1, args.spans // (EXPORTERS * SPANS_PER_REQUEST))
    sent = requests * EXPORTERS * SPANS_PER_REQUEST
    collector = Collector(port=0, idle_timeout=0.5, flush_interval=0.25, settings=settings).start()
    context = multiprocessing.get_context("spawn")
    ready, go = context.Queue(), context.Event()
    workers = [
        context.Process(target=_exporter, args=(collector.endpoint, w, requests, ready, go))
        for w in range(EXPORTERS)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=600)  # bodies built before the clock starts
    started = time.perf_counter()
    cpu_started = time.process_time()  # this process = the collector (exporters are others)
    go.set()
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    sent_s = time.perf_counter() - started
    collector.stop()  # writes what is still buffered
    total_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    with Store.open(settings) as store:
        ((traces,),) = store.rows("SELECT count() FROM {db}.traces")
        ((spans,),) = store.rows("SELECT count() FROM {db}.spans")
    sent_traces = sent // SPANS_PER_TRACE
    print(
        f"(2) collector, {EXPORTERS} exporter processes x {requests} requests "
        f"x {SPANS_PER_REQUEST} spans:"
    )
    print(f"    sent {sent:,} OTel spans ({sent_traces:,} traces) in {sent_s:.2f} s")
    stats = collector.stats
    print(
        f"    stored {traces:,} traces, {spans:,} Manta spans; "
        f"received {stats.spans_received:,}, rejected {stats.spans_rejected:,}"
    )
    print(
        f"    {sent / total_s:,.0f} OTel spans/s to the store (target >= 5,000); "
        f"loss: {sent_traces - traces} traces"
    )
    print(
        f"    collector CPU: {cpu_s:.2f} s = {sent / cpu_s:,.0f} spans per CPU-second; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rollouts", type=int, default=100_000)
    parser.add_argument("--spans", type=int, default=200_000, help="OTel spans for (2)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", choices=("import", "collector"))
    args = parser.parse_args()
    if args.only != "collector":
        bench_import(args)
    if args.only != "import":
        bench_collector(args)


if __name__ == "__main__":
    main()
