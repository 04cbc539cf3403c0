"""What the gateway does, made visible: Prometheus metrics, OpenTelemetry traces, JSON logs.

The pipeline reports each request to an :class:`~llmrelay.observability.observer.Observer` at a few
fixed points (admitted, each upstream attempt, stream open and close, finished); metrics and
tracing are observers, so no metric call is scattered through the request path.
"""
