"""OpenTelemetry: a span per pipeline, group and stage run, printed by the console exporter.

``OpenTelemetryHandler().instrument(pipeline)`` attaches the handler to the
pipeline and everything below it; spans nest pipeline → group → stage (also
for stages running concurrently), and a failure is recorded on its span with
status ERROR. Here spans go to stdout as JSON; in production, set up an OTLP
exporter instead. Needs ``pip install 'dynapipeline[otel]' opentelemetry-sdk``.
Run: ``python examples/otel.py``.
"""

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import dynapipeline
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import ConcurrentExecutionStrategy, SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy
from dynapipeline.otel import OpenTelemetryHandler


class Fetch(Stage):
    async def execute(self):
        await asyncio.sleep(0.01)
        return self.name


async def main():
    fetch = StageGroup(name="fetch", stages=[Fetch(name="users"), Fetch(name="orders")],
                       cycle_strategy=OnceCycleStrategy(), execution_strategy=ConcurrentExecutionStrategy())
    pipeline = PipelineFactory().create_pipeline(PipeLineType.SIMPLE, "nightly", [fetch], OnceCycleStrategy(),
                                                 SequentialExecutionStrategy())
    # The global provider; OpenTelemetryHandler(tracer_provider=...) takes another one.
    OpenTelemetryHandler().instrument(pipeline)
    await pipeline.run()


if __name__ == "__main__":
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    dynapipeline.run(main())
    provider.shutdown()
