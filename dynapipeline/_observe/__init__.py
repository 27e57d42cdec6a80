"""Observing a run: Tracer and its trace events, Progress, and the OpenTelemetry handler."""
