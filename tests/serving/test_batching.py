"""Dynamic batcher: merges concurrent requests, splits results back in order, bounds its queue."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from oracle import oracle_outputs

from ptycho_torch.errors import ConfigError
from serving.batching import DynamicBatcher
from serving.engine import Engine
from serving.errors import Overloaded


def _request(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((size, 1, 32, 32), np.float32), rng.random(size, np.float32) + 0.5


def test_concurrent_requests_share_batches_and_each_gets_its_own_results(engine: Engine) -> None:
    batches: list[int] = []
    batcher = DynamicBatcher(engine, max_queue_delay_us=200_000, observer=lambda n, q, c: batches.append(n))
    sizes = [3, 5, 1, 7, 2, 20, 4, 6]  # 20 > max_batch_size 16: spread over two batches
    requests = [_request(seed, size) for seed, size in enumerate(sizes)]
    try:
        with ThreadPoolExecutor(len(sizes)) as pool:
            results = list(pool.map(lambda r: batcher.infer(*r), requests))
    finally:
        batcher.close()
    for (diffraction, scale), (amplitude, phase) in zip(requests, results, strict=True):
        expected_amplitude, expected_phase = oracle_outputs(diffraction, scale)
        np.testing.assert_array_equal(amplitude, expected_amplitude)
        np.testing.assert_array_equal(phase, expected_phase)
    assert sum(batches) == sum(sizes)
    assert max(batches) == 16  # merged up to the maximum, never above
    assert len(batches) < len(sizes)


def test_a_lone_request_runs_after_the_queue_delay_without_others(engine: Engine) -> None:
    batcher = DynamicBatcher(engine, max_queue_delay_us=0)
    try:
        amplitude, _ = batcher.infer(*_request(0, 3))
        assert amplitude.shape == (3, 1, 32, 32)
        assert batcher.infer(*_request(1, 0))[0].shape == (0, 1, 32, 32)
    finally:
        batcher.close()
    assert not batcher.running


def test_a_full_queue_raises_overloaded_with_retry_after(engine: Engine) -> None:
    batcher = DynamicBatcher(engine, max_queue_delay_us=500_000, max_queue_size=1)
    try:
        first = batcher.submit(*_request(0, 1))  # waits up to 0.5 s for company
        with pytest.raises(Overloaded, match="the inference queue is full") as caught:
            batcher.submit(*_request(1, 1))
        assert caught.value.headers["Retry-After"] == "1"
        assert first.result(timeout=5)[0].shape == (1, 1, 32, 32)
    finally:
        batcher.close()


def test_a_failing_batch_fails_every_request_in_it_and_the_batcher_keeps_going(engine: Engine) -> None:
    calls = threading.Event()

    class Flaky:
        bundle, max_batch_size, input_shape = engine.bundle, engine.max_batch_size, engine.input_shape
        check_inputs = staticmethod(engine.check_inputs)

        def run(self, diffraction, scale):
            if not calls.is_set():
                calls.set()
                raise RuntimeError("device lost")
            return engine.run(diffraction, scale)

    batcher = DynamicBatcher(Flaky(), max_queue_delay_us=100_000)  # type: ignore[arg-type]
    try:
        futures = [batcher.submit(*_request(seed, 2)) for seed in range(3)]
        for future in futures:
            with pytest.raises(RuntimeError, match="device lost"):
                future.result(timeout=5)
        assert batcher.infer(*_request(9, 2))[0].shape == (2, 1, 32, 32)
    finally:
        batcher.close()


def test_knobs_are_checked(engine: Engine) -> None:
    with pytest.raises(ConfigError, match=r"`max_batch_size` must be an integer in \[1, 16\]"):
        DynamicBatcher(engine, max_batch_size=32)
    with pytest.raises(ConfigError, match="`max_queue_delay_us` must be a non-negative integer, got -1"):
        DynamicBatcher(engine, max_queue_delay_us=-1)
    with pytest.raises(ConfigError, match="`max_queue_size` must be a positive integer, got 0"):
        DynamicBatcher(engine, max_queue_size=0)
