"""A tool-using agent on the official ``openai`` client, traced by OpenTelemetry (a child process).

``python -m tests.lib.importers.otel_agent_child CHAT_URL OTLP_URL RUN_ID N_ROLLOUTS
[genai|openinference]``: the client is instrumented by ``opentelemetry-instrumentation-openai-v2``
(GenAI conventions, the default) or ``openinference-instrumentation-openai`` and exports with
the OTLP/HTTP protobuf exporter; the agent writes its own ``execute_tool`` spans (one tool
fails).
It prints, as JSON on stdout, the conversation it had with the model for each rollout.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "SPAN_ONLY"
os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"

import openai  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.trace import Status, StatusCode  # noqa: E402

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": name,
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
    for name in ("lookup", "divide")
]


def run_tool(name: str, arguments: dict[str, str]) -> str:
    if name == "divide":
        raise ZeroDivisionError("division by zero")
    return f"found {arguments['x']}"


def main() -> None:
    chat_url, otlp_url, run_id, rollouts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    instrumentation = sys.argv[5] if len(sys.argv) > 5 else "genai"
    if instrumentation == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor
    else:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    provider = TracerProvider(
        resource=Resource.create({"service.name": "agent", "manta.run_id": run_id})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_url)))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    tracer = provider.get_tracer("agent")
    client = openai.OpenAI(base_url=chat_url, api_key="test-key", max_retries=0)
    transcripts = []
    for rollout in range(rollouts):
        with tracer.start_as_current_span("invoke_agent solver") as root:
            root.set_attribute("gen_ai.operation.name", "invoke_agent")
            root.set_attribute("manta.datapoint_id", f"dp_{rollout}")
            root.set_attribute("manta.step", rollout)
            messages: list[dict] = [
                {"role": "system", "content": "You are a tool-using agent."},
                {"role": "user", "content": f"Question {rollout}: look up and divide."},
            ]
            while True:
                reply = client.chat.completions.create(
                    model="fake-model", messages=messages, tools=TOOLS
                )
                message = reply.choices[0].message
                entry = {"role": "assistant", "content": message.content or ""}
                if message.tool_calls:
                    entry["tool_calls"] = [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {
                                "name": c.function.name,
                                "arguments": c.function.arguments,
                            },
                        }
                        for c in message.tool_calls
                    ]
                messages.append(entry)
                if not message.tool_calls:
                    break
                for call in message.tool_calls:
                    with tracer.start_as_current_span(f"execute_tool {call.function.name}") as span:
                        span.set_attribute("gen_ai.operation.name", "execute_tool")
                        span.set_attribute("gen_ai.tool.name", call.function.name)
                        span.set_attribute("gen_ai.tool.call.id", call.id)
                        span.set_attribute("gen_ai.tool.call.arguments", call.function.arguments)
                        try:
                            result = run_tool(
                                call.function.name, json.loads(call.function.arguments)
                            )
                        except Exception as exc:  # the tool failed: report it to the model
                            span.set_status(Status(StatusCode.ERROR, str(exc)))
                            span.set_attribute("error.type", type(exc).__name__)
                            result = f"Error: {exc}"
                        span.set_attribute("gen_ai.tool.call.result", result)
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            transcripts.append(messages)
    provider.force_flush()
    provider.shutdown()
    json.dump(transcripts, sys.stdout)


if __name__ == "__main__":
    main()
