"""Importer and collector throughput.

    .venv/bin/python benchmarks/bench_import_formats.py [--rollouts 100000] [--spans 200000]

(1) ``manta import`` of N OpenAI-message rollouts (about 10 messages each, with tool calls)
against the same traces already in Manta's JSON Lines format, side by side in one process,
each into an emptied database, alternated ``--repeat`` times keeping the best of each;
prints the ratio openai / native (target <= 2x).
(2) ``manta collect`` (the :class:`Collector`, in this process) receiving OTLP/HTTP protobuf
from 4 concurrent exporter processes, each the OpenTelemetry SDK's ``OTLPSpanExporter``
handed batches of 512 finished spans (the BatchSpanProcessor's batch size) of GenAI agent
traces; prints spans/s from the first export to the last trace written (target >= 8,000), the
spans the exporters exported against the traces and spans stored (no loss), and the collector's
CPU time (its process and its worker processes) against the exporters' (the same work every
run, so a reference under load).
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
from manta_lib.collector.server import Collector  # noqa: E402
from manta_lib.importers import Hierarchy, import_files  # noqa: E402
from manta_lib.importers.openai import rollout_trace  # noqa: E402
from manta_lib.ingest.loader import import_jsonl  # noqa: E402
from manta_lib.store import Store  # noqa: E402

RUN = "bench_import"
EXPORTERS = 4
SPANS_PER_REQUEST = 512
SPANS_PER_TRACE = 4  # invoke_agent, chat, execute_tool, chat
MANTA_SPANS_PER_TRACE = 8  # 5 messages, the tool call, the 2 LLM calls (the agent span is kept)


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
    store.command("TRUNCATE TABLE {db}.otel_spans")


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


def _readable_spans(trace_numbers: range, resource: Any) -> list[Any]:
    """GenAI agent traces as the OpenTelemetry SDK hands finished spans to its exporter."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

    from manta_lib.importers.otel_decode import json_attributes
    from tests.lib.importers.otlp_builders import genai_agent_trace

    scope = InstrumentationScope("bench")
    out = []
    for number in trace_numbers:
        for item in genai_agent_trace(number):
            trace_id = int(item["traceId"], 16)
            context = SpanContext(trace_id, int(item["spanId"], 16), False, TraceFlags(1))
            parent = item.get("parentSpanId")
            error = item["status"].get("code") == 2
            out.append(
                ReadableSpan(
                    item["name"],
                    context=context,
                    parent=SpanContext(trace_id, int(parent, 16), False) if parent else None,
                    resource=resource,
                    attributes=json_attributes(item["attributes"]),
                    events=[
                        Event(e["name"], json_attributes(e["attributes"]), int(e["timeUnixNano"]))
                        for e in item["events"]
                    ],
                    status=Status(StatusCode.ERROR, "failed") if error else Status(),
                    start_time=int(item["startTimeUnixNano"]),
                    end_time=int(item["endTimeUnixNano"]),
                    instrumentation_scope=scope,
                )
            )
    return out


def _exporter(endpoint: str, worker: int, requests: int, ready: Any, go: Any, done: Any) -> None:
    """One process exporting like an instrumented agent: the OpenTelemetry SDK's OTLP/HTTP
    exporter (protobuf, retrying on 503) is handed batches of 512 finished spans, as its
    BatchSpanProcessor would; reports the spans it exported successfully and its CPU time."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExportResult

    resource = Resource({"service.name": "bench", "manta.run_id": RUN})
    traces_per_request = SPANS_PER_REQUEST // SPANS_PER_TRACE
    batches = [
        _readable_spans(range(first, first + traces_per_request), resource)
        for first in (worker * 1_000_000 + r * traces_per_request + 1 for r in range(requests))
    ]
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=60)
    ready.put(worker)
    go.wait()
    cpu = time.process_time()
    exported = 0
    for batch in batches:
        if exporter.export(batch) is not SpanExportResult.SUCCESS:
            break  # counted as not sent; the comparison with the store shows it
        exported += len(batch)
    done.put((exported, time.process_time() - cpu))
    exporter.shutdown()


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of running processes (Linux /proc; 0 for those gone)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def bench_collector(args: argparse.Namespace) -> None:
    settings = bench_settings("collector")
    with Store.open(settings) as store:
        empty(store)
    requests = max(1, args.spans // (EXPORTERS * SPANS_PER_REQUEST))
    spool = settings.data_dir / "collector" / "spool"
    for leftover in spool.glob("*.spool"):  # of an earlier run stopped half-way
        leftover.unlink()
    collector = Collector(
        port=0, idle_timeout=0.5, flush_interval=0.25, settings=settings, workers=args.workers
    ).start()
    context = multiprocessing.get_context("spawn")
    ready, go, done = context.Queue(), context.Event(), context.Queue()
    workers = [
        context.Process(target=_exporter, args=(collector.endpoint, w, requests, ready, go, done))
        for w in range(EXPORTERS)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=600)  # spans built before the clock starts
    pids = collector.worker_pids  # the collector's worker processes (warm by now)
    started = time.perf_counter()
    cpu_started = time.process_time()  # this process + its workers = the collector
    workers_started = _cpu_seconds(pids)
    go.set()
    reports = [done.get(timeout=3600) for _ in workers]
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    sent_s = time.perf_counter() - started
    sent = sum(exported for exported, _ in reports)
    exporter_cpu = sum(cpu for _, cpu in reports)
    workers_cpu = _cpu_seconds(pids) - workers_started  # before stop() ends them
    collector.stop()  # writes what is still buffered
    total_s = time.perf_counter() - started
    main_cpu = time.process_time() - cpu_started
    cpu_s = main_cpu + workers_cpu
    with Store.open(settings) as store:
        ((traces,),) = store.rows("SELECT count() FROM {db}.traces")
        ((spans,),) = store.rows("SELECT count() FROM {db}.spans")
    sent_traces = sent // SPANS_PER_TRACE
    print(
        f"(2) collector, {EXPORTERS} exporter processes x {requests} requests "
        f"x {SPANS_PER_REQUEST} spans:"
    )
    print(
        f"    exported {sent:,} of {requests * EXPORTERS * SPANS_PER_REQUEST:,} OTel spans "
        f"({sent_traces:,} traces) in {sent_s:.2f} s (exporters' CPU {exporter_cpu:.2f} s)"
    )
    stats = collector.stats
    print(
        f"    stored {traces:,} traces, {spans:,} Manta spans; "
        f"received {stats.spans_received:,}, rejected {stats.spans_rejected:,}"
    )
    print(
        f"    {sent / total_s:,.0f} OTel spans/s to the store (target >= 8,000); "
        f"loss: {sent_traces - traces} traces, "
        f"{sent_traces * MANTA_SPANS_PER_TRACE - spans} Manta spans"
    )
    print(
        f"    collector CPU: {cpu_s:.2f} s = {sent / cpu_s:,.0f} spans per CPU-second "
        f"(its process {main_cpu:.2f} s, {len(pids)} worker processes {workers_cpu:.2f} s); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"    collector CPU / exporters' CPU: {cpu_s / exporter_cpu:.2f}x (the exporters' work "
        "is the same every run: the ratio is steadier than CPU seconds on a loaded machine)"
    )
    expected = requests * EXPORTERS * SPANS_PER_REQUEST
    if sent != expected or (traces, spans) != (sent_traces, sent_traces * MANTA_SPANS_PER_TRACE):
        raise SystemExit("collector: an export failed or traces were lost (see above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rollouts", type=int, default=100_000)
    parser.add_argument("--spans", type=int, default=200_000, help="OTel spans for (2)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", choices=("import", "collector"))
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="the collector's worker processes (0: none; default: one per core beyond the "
        "second, up to 4)",
    )
    args = parser.parse_args()
    if args.only != "collector":
        bench_import(args)
    if args.only != "import":
        bench_collector(args)


if __name__ == "__main__":
    main()
