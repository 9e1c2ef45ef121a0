"""One serving configuration: the `serve` flags, create_app, the batcher and the engine read the same
object, and each default is written once (in serving.config)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest

from ptycho_torch.bundle import Bundle
from ptycho_torch.errors import ConfigError
from serving import cli as serve_cli
from serving.app import create_app
from serving.batching import DynamicBatcher
from serving.config import DEFAULTS, Limits, MiB, ServingConfig, SessionLimits
from serving.engine import Engine


def _parse(argv: list[str]) -> ServingConfig:
    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    return serve_cli.config_from_args(parser.parse_args(argv))


def test_serve_without_flags_is_the_default_config() -> None:
    assert _parse([]) == DEFAULTS == ServingConfig()


def test_every_serve_flag_reaches_its_field(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  s3cret\n")
    config = _parse([
        "--bundle", "b", "--model-repository", "repo", "--host", "0.0.0.0", "--port", "9001",
        "--max-batch-size", "8", "--max-queue-delay-us", "250", "--max-queue-size", "5", "--max-queue-wait-s", "1.5",
        "--providers", "cpu, cuda", "--intra-op-threads", "2", "--token-file", str(token),
        "--max-request-mb", "3", "--max-request-memory-mb", "40", "--max-concurrent-reconstructs", "2",
        "--body-timeout-s", "600", "--allow-remote", "--allowed-hosts", "a.example,b.example",
        "--cors-origins", "http://v.example", "--max-sessions", "3", "--max-pending-frames", "99",
        "--trusted-key", "k1.pem", "--trusted-key", "k2.pem", "--session-idle-s", "60", "--refine-backend", "cupy",
    ])
    assert config == ServingConfig(
        bundle=Path("b"), model_repository=Path("repo"), host="0.0.0.0", port=9001, max_batch_size=8,
        max_queue_delay_us=250, max_queue_size=5, max_queue_wait_s=1.5, providers=("cpu", "cuda"),
        intra_op_threads=2, token="s3cret", max_concurrent_reconstructs=2, allow_remote=True,
        allowed_hosts=("a.example", "b.example"), cors_origins=("http://v.example",),
        trusted_keys=(Path("k1.pem"), Path("k2.pem")),
        limits=Limits(max_body_bytes=3 * MiB, max_request_memory_bytes=40 * MiB, body_timeout_s=600.0,
                      body_idle_timeout_s=30.0),  # a tenth of 600 s, at most the default 30 s
        sessions=SessionLimits(max_sessions=3, max_pending_frames=99, idle_timeout_s=60.0), refine_backend="cupy",
    )


def test_the_refine_backend_is_checked_at_start_and_set_for_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    from ptycho_torch.refinement import RefineSettings
    from ptycho_torch.refinement.backend import ENVIRONMENT

    monkeypatch.setitem(sys.modules, "cupy", None)  # a host without the gpu extra
    monkeypatch.setenv(ENVIRONMENT, "numpy")  # recorded, so whatever the test sets is undone after it
    monkeypatch.delenv(ENVIRONMENT)
    with pytest.raises(ConfigError, match=r"^`--refine-backend cupy`: backend 'cupy' needs CuPy: pip install "):
        serve_cli.require_refine_backend("cupy")
    assert ENVIRONMENT not in os.environ and RefineSettings().backend == "numpy"
    serve_cli.require_refine_backend("numpy")
    assert os.environ[ENVIRONMENT] == "numpy" and RefineSettings().backend == "numpy"
    monkeypatch.setenv(ENVIRONMENT, "cupy")  # what a GPU host's Ptychodus or CLI is given
    assert RefineSettings().backend == "cupy" and RefineSettings(backend="numpy").backend == "numpy"


_FIX = ("; unset $PTYCHOPINN_REFINE_BACKEND or set it to numpy (CPU threads), or install the gpu extra for cupy "
        "(pip install 'ptychopinn-serve[gpu]')")


@pytest.mark.parametrize(("value", "message"), [
    ("gpu", "`$PTYCHOPINN_REFINE_BACKEND=gpu`: refinements run on one of ['numpy', 'cupy'], got 'gpu'" + _FIX),
    ("cupy", "`$PTYCHOPINN_REFINE_BACKEND=cupy`: backend 'cupy' needs CuPy: pip install 'ptychopinn-serve[gpu]'"),
])
def test_serve_refuses_a_refine_backend_from_the_environment_it_cannot_use_before_it_is_ready(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, message: str) -> None:
    """Without --refine-backend the environment's backend is checked at start, in one line naming the fix
    (it used to pass, and every /v1/reconstruct then got 422)."""
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)  # a host without the gpu extra
    monkeypatch.setenv("PTYCHOPINN_REFINE_BACKEND", value)
    with pytest.raises(ConfigError) as refused:
        serve_cli.require_refine_backend(None)
    assert str(refused.value).startswith(message) and str(refused.value).endswith(_FIX)
    assert "\n" not in str(refused.value)
    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    with pytest.raises(ConfigError) as at_start:  # before the bundle (which does not exist) is loaded
        serve_cli.run(parser.parse_args(["--bundle", str(tmp_path / "no-such-bundle")]))
    assert str(at_start.value) == str(refused.value)


def test_an_empty_refine_backend_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ptycho_torch.refinement import RefineSettings
    from ptycho_torch.refinement.backend import ENVIRONMENT, backend_problem, default_backend

    monkeypatch.setenv(ENVIRONMENT, "")
    serve_cli.require_refine_backend(None)
    assert os.environ[ENVIRONMENT] == "" and default_backend() == "numpy" and RefineSettings().backend == "numpy"
    assert backend_problem() is None


def test_engine_and_batcher_defaults_are_the_config_defaults(engine: Engine) -> None:
    signature = {cls: inspect.signature(cls).parameters for cls in (Engine, DynamicBatcher)}
    for name in ("providers", "max_batch_size", "intra_op_threads"):
        assert signature[Engine][name].default == getattr(DEFAULTS, name), name
    for name in ("max_queue_delay_us", "max_queue_size", "max_queue_wait_s"):
        assert signature[DynamicBatcher][name].default == getattr(DEFAULTS, name), name
    batcher = create_app(engine).state.serving.repository.default().batcher
    assert batcher.max_queue_delay_s == DEFAULTS.max_queue_delay_us * 1e-6
    assert batcher.max_queue_size == DEFAULTS.max_queue_size and batcher.max_queue_wait_s is None
    assert batcher.max_batch_size == min(DEFAULTS.max_batch_size, engine.max_batch_size)


def test_a_changed_config_takes_effect_in_engine_batcher_and_app(oracle_bundle: Bundle) -> None:
    config = ServingConfig(providers=["cpu"], intra_op_threads=1, max_batch_size=4, max_queue_delay_us=7,
                           max_queue_size=3, max_queue_wait_s=2.5, max_concurrent_reconstructs=2,
                           limits=Limits(max_request_memory_bytes=64 * MiB))
    engine = Engine.from_config(oracle_bundle, config, warmup=False)
    assert engine.max_batch_size == 4 and engine.batch_sizes == (1, 2, 4)
    assert engine.providers == ["CPUExecutionProvider"]
    assert engine.session.get_session_options().intra_op_num_threads == 1
    app = create_app(engine, config)
    state = app.state.serving
    model = state.repository.default()
    assert (model.batcher.max_batch_size, model.batcher.max_queue_delay_s, model.batcher.max_queue_size,
            model.batcher.max_queue_wait_s) == (4, 7e-6, 3, 2.5)
    assert model.parameters["max_batch_size"] == 4
    assert state.infer_admission.limit == 3 and state.reconstruct_admission.limit == 2
    assert state.limits == config.limits and state.limits.max_json_bytes == 2 * MiB
    # keywords replace single fields of the config
    replaced = create_app(engine, config, max_queue_size=9).state.serving
    assert replaced.repository.default().batcher.max_queue_size == 9 and replaced.infer_admission.limit == 9
    assert replaced.repository.default().batcher.max_queue_wait_s == 2.5


def test_bad_settings_are_one_line_errors_naming_them(engine: Engine) -> None:
    with pytest.raises(ConfigError, match=r"unknown serving settings \['max_batch'\]; the fields .*'max_batch_size'"):
        create_app(engine, max_batch=8)
    with pytest.raises(ConfigError, match="`token` must be a non-empty string or None"):
        ServingConfig(token="  ")
    with pytest.raises(ConfigError, match=r"`port` must be an integer in \[0, 65535\], got 70000"):
        ServingConfig(port=70000)
    with pytest.raises(ConfigError, match="`sessions` must be a SessionLimits, got dict"):
        ServingConfig(sessions={"max_sessions": 2})


def test_every_config_field_has_a_docstring() -> None:
    from ptycho_torch.config_flags import field_docs

    for cls in (ServingConfig, Limits, SessionLimits):
        assert {f.name for f in dataclasses.fields(cls)} - set(field_docs(cls)) == set(), cls.__name__
