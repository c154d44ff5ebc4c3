"""Observability: OpenTelemetry tracing, Prometheus metrics and structured logs."""
