"""OpenTelemetry spans for pipeline runs (``pip install 'dynapipeline[otel]'``).

``OpenTelemetryHandler().instrument(pipeline)`` gives every component of the
pipeline a span per run, nested pipeline → group → stage. Importing this module
without OpenTelemetry installed raises an ImportError naming the ``otel`` extra.
"""

from dynapipeline._observe.otel import OpenTelemetryHandler

__all__ = ["OpenTelemetryHandler"]
