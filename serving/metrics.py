"""Prometheus metrics of one app, in their own registry.

``ptychopinn_*``: requests by route and status, latency, queue and compute histograms (seconds) by
model. ``nv_inference_*`` (:class:`TritonCollector`): Triton's own names and labels (``model``,
``version``, microseconds) for every served version, what Triton's Grafana dashboards query.
Average batch size = ``nv_inference_count / nv_inference_exec_count``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric

if TYPE_CHECKING:
    from serving.repository import ModelRepository

__all__ = ["ServiceMetrics", "TritonCollector"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_NLL_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1, 1.5, 2, 3, 5, 10, 30, 100)
_R_FACTOR_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2)
_FRACTION_BUCKETS = (0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1)
_ITERATION_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServiceMetrics:
    """Counters and histograms for requests, queueing, compute and batches."""

    def __init__(self, model: str, max_batch_size: int) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        self.requests = Counter("ptychopinn_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("ptychopinn_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        per_model = self._per_model
        self.queue = per_model(Histogram, "ptychopinn_queue_duration_seconds",
                               "time a request waited in the batcher queue before its first batch ran",
                               buckets=_LATENCY_BUCKETS)
        self.compute = per_model(Histogram, "ptychopinn_compute_duration_seconds",
                                 "onnxruntime time per executed batch", buckets=_LATENCY_BUCKETS)
        sizes = sorted({2**k for k in range(max_batch_size.bit_length() + 1) if 2**k <= max_batch_size}
                       | {max_batch_size})
        self.batch_size = per_model(Histogram, "ptychopinn_batch_size", "items per executed batch", buckets=sizes)
        self.inference_count = per_model(Counter, "ptychopinn_inference_count", "items (diffraction groups) inferred")
        self.execution_count = per_model(Counter, "ptychopinn_execution_count", "model executions (batches) run")
        self.data_fit_nll = per_model(Histogram, "ptychopinn_data_fit_nll",
                                      "median per-pattern Poisson NLL per pixel of each /v1/reconstruct result",
                                      buckets=_NLL_BUCKETS)
        self.data_fit_r_factor = per_model(Histogram, "ptychopinn_data_fit_r_factor",
                                           "median per-pattern R-factor of each /v1/reconstruct result",
                                           buckets=_R_FACTOR_BUCKETS)
        self.data_fit_outliers = per_model(Histogram, "ptychopinn_data_fit_outlier_fraction",
                                           "fraction of a scan's patterns its result does not explain",
                                           buckets=_FRACTION_BUCKETS)
        self.refine_iterations = per_model(Histogram, "ptychopinn_refine_iterations",
                                           "refinement iterations run per request", buckets=_ITERATION_BUCKETS)
        self.queue_length = per_model(Gauge, "ptychopinn_queue_length", "requests waiting in the batcher queue")

    def _per_model(self, kind: Any, name: str, documentation: str, **options: Any) -> Any:
        """A ``kind`` (Counter, Gauge, Histogram) labelled by ``model``, in this app's registry."""
        return kind(name, documentation, ["model"], registry=self.registry, **options)

    def observe_batch(self, size: int, queue_s: list[float], compute_s: float, *, model: str | None = None) -> None:
        """The batcher's observer: one executed batch of ``model`` (default: the app's first model)."""
        model = self.model if model is None else model
        self.batch_size.labels(model).observe(size)
        self.compute.labels(model).observe(compute_s)
        self.inference_count.labels(model).inc(size)
        self.execution_count.labels(model).inc()
        for seconds in queue_s:
            self.queue.labels(model).observe(seconds)

    def observe_data_fit(self, data_fit: dict[str, Any] | None, n_patterns: int, iterations: int) -> None:
        """One /v1/reconstruct result: its data-fit medians, outlier fraction and refinement iterations."""
        self.refine_iterations.labels(self.model).observe(iterations)
        if data_fit is None:
            return
        self.data_fit_nll.labels(self.model).observe(data_fit["nll_median"])
        self.data_fit_r_factor.labels(self.model).observe(data_fit["r_factor_median"])
        self.data_fit_outliers.labels(self.model).observe(data_fit["n_outliers"] / max(n_patterns, 1))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """One finished HTTP request."""
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)


TRITON_METRICS = (
    # name, help, value from a version's InferenceStats
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", lambda s: s.fail.count),
    ("nv_inference_count", "Number of inferences performed (items, not requests)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (batches)", lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s.compute_infer.ns // 1000),
)


class TritonCollector:
    """Triton's per-model metrics (``nv_inference_*`` with labels ``model`` and ``version``), read from the
    statistics of each :class:`~serving.repository.ModelVersion` at scrape time, so Triton dashboards
    work unchanged. Exposed untyped under Triton's exact names: prometheus_client would append
    ``_total`` to a typed counter."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def collect(self) -> Iterator[Metric]:
        models = self.repository.all()
        for name, documentation, read in TRITON_METRICS:
            metric = Metric(name, documentation, "unknown")
            for model in models:
                metric.add_sample(name, {"model": model.name, "version": model.version}, float(read(model.stats)))
            yield metric
