"""Export: a real generator -> bundle -> onnxruntime in a torch-free process, TorchScript, Triton.

One bundle per gridsize (module-scoped: the dynamo export costs seconds), verified on real
patterns (the tike Siemens-star scan, detector cropped to N=32).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.bundle_writer import export_bundle
from export.onnx import EXPORTER_LOGGERS, export_onnx
from export.options import ExportOptions
from export.verify import FP16_TOLERANCE, FP32_TOLERANCE, verification_inputs, verify_exports
from ptycho_torch import params
from ptycho_torch.bundle import Bundle
from ptycho_torch.checkpoint import CheckpointRecord, load_generator
from ptycho_torch.config import ModelConfig, TrainingConfig
from ptycho_torch.data import load_siemens_star
from ptycho_torch.errors import BundleError, ExportError
from ptycho_torch.model import PtychoPINNGenerator, build_generator
from ptychopinn.cli import main as cli_main

N = 32
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scan32(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Siemens-star scan at N=32, as a contract NPZ."""
    return load_siemens_star(data_dir / "siemens-star-small.npz.bz2", N).to_file(
        tmp_path_factory.mktemp("scan") / "siemens32.npz")


@dataclasses.dataclass
class Exported:
    generator: PtychoPINNGenerator
    bundle: Bundle
    diffraction: np.ndarray
    zip_path: Path


@pytest.fixture(scope="module", params=[(1, "tf"), (2, "full")], ids=["gridsize1-tf", "gridsize2-full"])
def exported(request: pytest.FixtureRequest, scan32: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    gridsize, kind = request.param  # both generators (bilinear upsampling in 'full') go through every check
    torch.manual_seed(gridsize)
    config = ModelConfig(N=N, gridsize=gridsize, n_filters_scale=1, generator=kind)
    generator = PtychoPINNGenerator(config).eval()
    diffraction = verification_inputs(scan32, N, gridsize, n_groups=32)
    record = CheckpointRecord(training=TrainingConfig(model=config, train_data_file=scan32), training_scale=0.02,
                              intensity_scale=1234.5, train_data_sha256="0" * 64)
    out = tmp_path_factory.mktemp(f"gs{gridsize}") / "bundle"
    mask_file = None
    if gridsize == 2:  # one variant ships a detector mask
        mask_file = out.parent / "mask.npy"
        np.save(mask_file, np.eye(N, dtype=np.uint8)[::-1])  # 0/1 integers are accepted
    bundle = export_bundle(generator, out, record=record, probe=np.ones((N, N), np.complex64),
                           diffraction=diffraction, inputs_label="siemens32.npz",
                           options=ExportOptions(zip=True, fp16=gridsize == 2, bad_pixels=mask_file,
                                                 pixel_size_m=2e-8 if gridsize == 2 else None))
    return Exported(generator, bundle, diffraction, out.with_suffix(".zip"))


def _eager(generator: torch.nn.Module, diffraction: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        return tuple(t.numpy() for t in generator(torch.from_numpy(diffraction), torch.from_numpy(scale)))


TORCH_FREE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "lightning", "pytorch_lightning"):
                raise ImportError(f"{name} is blocked in this process")
    sys.meta_path.insert(0, Block())
    try:
        import torch
        raise SystemExit("torch imported despite the blocker")
    except ImportError:
        pass

    import onnxruntime as ort
    from ptycho_torch.bundle import load_bundle

    data = np.load(sys.argv[1])
    result = {}
    for path in sys.argv[2:]:
        bundle = load_bundle(path)
        session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
        amplitude, phase = session.run(None, {"diffraction": data["diffraction"], "scale": data["scale"]})
        result[path] = [float(np.abs(amplitude - data["amplitude"]).max()),
                        float(np.abs(phase - data["phase"]).max()), bundle.N, bundle.channels]
    result["torch_loaded"] = [m for m in sys.modules if m.split(".")[0] == "torch"]
    print(json.dumps(result))
""")


def test_onnxruntime_without_torch_matches_eager(exported: Exported, tmp_path: Path) -> None:
    diffraction = exported.diffraction[:19]  # a batch size never seen at export
    scale = np.full(len(diffraction), 0.37, np.float32)
    amplitude, phase = _eager(exported.generator, diffraction, scale)
    np.savez(tmp_path / "io.npz", diffraction=diffraction, scale=scale, amplitude=amplitude, phase=phase)
    script = tmp_path / "torch_free.py"
    script.write_text(TORCH_FREE_SCRIPT)
    bundle_dir, zip_path = str(exported.bundle.root), str(exported.zip_path)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "io.npz"), bundle_dir, zip_path],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("torch_loaded") == []
    for path in (bundle_dir, zip_path):
        amplitude_error, phase_error, n, channels = result[path]
        assert amplitude_error <= FP32_TOLERANCE and phase_error <= FP32_TOLERANCE
        assert (n, channels) == (N, exported.bundle.gridsize**2)


def test_manifest_records_measured_parity(exported: Exported) -> None:
    manifest = exported.bundle.manifest
    verification = manifest.verification
    assert verification.n_samples == len(exported.diffraction) == 32
    assert verification.tolerance == FP32_TOLERANCE and verification.inputs == "siemens32.npz"
    engines = {"onnxruntime_cpu", "torchscript", "batch_1_vs_n_eager", "batch_1_vs_n_onnxruntime"}
    if manifest.gridsize == 2:
        engines.add("onnxruntime_cpu_fp16")
        assert manifest.variants == {"fp16": "model.fp16.onnx"} and verification.fp16_tolerance == FP16_TOLERANCE
        fp16 = verification.errors["onnxruntime_cpu_fp16"]
        assert 0 < max(fp16.amplitude, fp16.phase) <= FP16_TOLERANCE  # fp16 really is a different graph
    assert set(verification.errors) == engines
    for name in engines - {"onnxruntime_cpu_fp16"}:
        assert max(verification.errors[name].amplitude, verification.errors[name].phase) <= FP32_TOLERANCE
    assert exported.bundle.training_scale == manifest.normalization.training_scale == 0.02
    assert exported.bundle.intensity_scale == 1234.5 and exported.bundle.stitch_M == N // 2
    assert manifest.provenance.train_data_sha256 == "0" * 64 and manifest.provenance.torch_version == torch.__version__
    assert {"model.onnx", "model.ts", "params.json", "probe.npy", "triton/ptychopinn/config.pbtxt",
            "triton/ptychopinn/1/model.onnx"} <= set(manifest.files)


def test_params_json_is_the_full_params_cfg_snapshot(exported: Exported) -> None:
    snapshot = exported.bundle.params
    assert set(params.DEFAULT_CFG) <= set(snapshot)
    assert (snapshot["N"], snapshot["gridsize"], snapshot["n_filters_scale"]) == (N, exported.bundle.gridsize, 1)
    assert snapshot["input_scale"] == 0.02 and snapshot["intensity_scale"] == 1234.5


def test_triton_config_parses_and_names_the_graph_tensors(exported: Exported) -> None:
    root = exported.bundle.root
    config = text_format.Parse((root / "triton/ptychopinn/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(str(root / "triton/ptychopinn/1/model.onnx")).graph
    assert (root / "triton/ptychopinn/1/model.onnx").read_bytes() == exported.bundle.onnx_path.read_bytes()
    assert config.name == "ptychopinn" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 256
    assert config.HasField("dynamic_batching") and list(config.version_policy.specific.versions) == [1]
    for declared, onnx_values in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in declared] == [v.name for v in onnx_values]
        for tensor, value in zip(declared, onnx_values, strict=True):
            graph_dims = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]  # minus the batch axis
            assert tensor.data_type == model_config_pb2.TYPE_FP32
            if graph_dims:
                assert list(tensor.dims) == graph_dims
            else:  # (B,) scale: Triton's per-sample scalar idiom
                assert list(tensor.dims) == [1] and list(tensor.reshape.shape) == []


def test_torchscript_loads_and_matches_eager(exported: Exported) -> None:
    scripted = torch.jit.load(str(exported.bundle.root / "model.ts"))
    for batch in (1, 7):
        diffraction = exported.diffraction[:batch]
        scale = np.full(batch, 0.5, np.float32)
        with torch.no_grad():
            got = [t.numpy() for t in scripted(torch.from_numpy(diffraction), torch.from_numpy(scale))]
        for g, want in zip(got, _eager(exported.generator, diffraction, scale), strict=True):
            assert g.shape == want.shape and np.abs(g - want).max() <= FP32_TOLERANCE


def test_verification_fails_with_the_measured_numbers(exported: Exported) -> None:
    other = PtychoPINNGenerator(exported.generator.config).eval()  # different random weights
    with pytest.raises(ExportError, match=r"must match torch eager on real.*onnxruntime_cpu: max\|d amplitude\| "
                                          r"[0-9.e+-]+, max\|d phase\| [0-9.e+-]+ \(tolerance 0.0001\)"):
        verify_exports(other, exported.diffraction[:8], onnx_path=exported.bundle.onnx_path,
                       torchscript_path=exported.bundle.root / "model.ts", inputs_label="real patterns")


def test_a_detector_mask_ships_in_the_bundle_checksummed(exported: Exported) -> None:
    bundle = exported.bundle
    if bundle.gridsize == 1:
        assert bundle.bad_pixels is None and "bad_pixels.npy" not in bundle.manifest.files
        return
    np.testing.assert_array_equal(bundle.bad_pixels, np.eye(N, dtype=bool)[::-1])
    assert "bad_pixels.npy" in bundle.manifest.files


def test_export_refuses_bad_output_dir_and_options(exported: Exported) -> None:
    with pytest.raises(ExportError, match=r"`--out` must be a new or empty directory"):
        record = CheckpointRecord(training=TrainingConfig(model=exported.generator.config), training_scale=1.0,
                                  intensity_scale=1.0)
        export_bundle(exported.generator, exported.bundle.root, record=record, probe=exported.bundle.probe,
                      diffraction=exported.diffraction, inputs_label="x")
    with pytest.raises(ExportError, match=r"`name` must be letters, digits"):
        ExportOptions(name="a/b")


def test_a_stitch_crop_out_of_range_is_refused_before_anything_is_written(exported: Exported, tmp_path: Path) -> None:
    """``--stitch-m 0`` was silently replaced by the default; a crop over N/2 failed only after the whole
    export, leaving an unloadable bundle behind."""
    with pytest.raises(ExportError, match=r"`--stitch-m` must be a positive integer \(at most N/2\), got 0"):
        ExportOptions(stitch_M=0)
    record = CheckpointRecord(training=TrainingConfig(model=exported.generator.config), training_scale=1.0,
                              intensity_scale=1.0)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match=rf"`--stitch-m` must be in \[1, N/2 = {N // 2}\], got 99"):
        export_bundle(exported.generator, out, record=record, probe=exported.bundle.probe,
                      diffraction=exported.diffraction, inputs_label="x", options=ExportOptions(stitch_M=99))
    assert not out.exists()


@pytest.mark.parametrize("architecture", ["fno", "ffno"])
def test_fourier_generators_export_without_a_dft_node_and_pass_the_parity_checks(
        architecture: str, scan32: Path, tmp_path: Path) -> None:
    """What onnxruntime's CUDA and TensorRT providers cannot run is a DFT node: the Fourier layers are
    matrix products instead, and the graph passes the export's own parity checks (onnxruntime CPU and
    TorchScript against eager, batch 1 against batch n)."""
    from export.torchscript import export_torchscript

    torch.manual_seed(0)
    generator = build_generator(ModelConfig(N=N, gridsize=2, n_filters_scale=1, architecture=architecture)).eval()
    onnx_path = export_onnx(generator, tmp_path / "model.onnx")
    model = onnx.load(str(onnx_path))
    ops = {node.op_type for graph_nodes in [model.graph.node, *(f.node for f in model.functions)]
           for node in graph_nodes}
    assert not ops & {"DFT", "STFT"} and "MatMul" in ops
    diffraction = verification_inputs(scan32, N, 2, n_groups=19)
    verification = verify_exports(generator, diffraction, onnx_path=onnx_path, inputs_label="siemens32.npz",
                                  torchscript_path=export_torchscript(generator, tmp_path / "model.ts"))
    assert max(max(e.amplitude, e.phase) for e in verification.errors.values()) <= FP32_TOLERANCE


def test_cli_reports_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", "--checkpoint", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "b")]) == 2
    assert "`--checkpoint` must be an existing .ckpt file" in capsys.readouterr().err


def test_cli_exports_a_trained_checkpoint(scan32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    from ptycho_torch.bundle import load_bundle
    from ptycho_torch.checksums import sha256_file
    from ptycho_torch.config import PyTorchExecutionConfig
    from ptycho_torch.data import RawData
    from training.trainer import train

    config = ModelConfig(N=N, gridsize=1, n_filters_scale=1)
    training = TrainingConfig(model=config, train_data_file=scan32, batch_size=16, nepochs=1, n_groups=32,
                              output_dir=tmp_path / "run")
    execution = PyTorchExecutionConfig(accelerator="cpu", max_steps=2, logger_backend="none",
                                       enable_progress_bar=False)
    result = train(training, execution, train_data=RawData.from_file(scan32), train_data_sha256=sha256_file(scan32))
    out = tmp_path / "bundle"
    caplog.clear()
    caplog.set_level(logging.INFO)  # what the command's own logging shows
    from ptycho_torch.bundle import generate_key_pair

    key, public = generate_key_pair(tmp_path / "signing.key")
    assert cli_main(["export", "--checkpoint", str(result.last_checkpoint), "--out", str(out), "--zip",
                     "--sign", str(key)]) == 0
    assert "verified   on 64 samples of the training scan siemens32.npz" in capsys.readouterr().out
    chatter = [r.getMessage() for r in caplog.records if r.name.startswith(EXPORTER_LOGGERS)]
    assert chatter == []  # the exporter's ~45 pass-by-pass INFO/WARNING lines stay out of the user's log
    generator, checkpoint, probe = load_generator(result.last_checkpoint)
    bundle = load_bundle(out.with_suffix(".zip"), trusted_keys=[public])  # signed, and the zip carries it
    assert bundle.signed and bundle.signed_by is not None
    assert bundle.training_scale == checkpoint.training_scale and bundle.intensity_scale == checkpoint.intensity_scale
    assert bundle.params == checkpoint.params_snapshot()
    assert bundle.manifest.provenance.train_data_sha256 == sha256_file(scan32)
    record = bundle.manifest.training  # recipe, effort and held-out fit, from the run's summary.json
    assert record.steps == 2 and record.wall_s == result.summary.wall_s > 0
    assert record.recipe == {  # the config fields marked RECIPE, the architecture too: a bundle says which it is
        "model.N": N, "model.gridsize": 1, "model.n_filters_scale": 1, "model.architecture": "cnn",
        "model.generator": "tf",
        "model.amp_activation": "sigmoid", "training.train_data_file": str(scan32), "training.batch_size": 16,
        "training.nepochs": 1, "training.mae_weight": 0.0, "training.nll_weight": 1.0, "training.nphotons": 1e9,
        "training.refine_probe": False, "training.probe_trainable": False, "training.probe_learning_rate": 1e-3,
        "training.distill_weight": 0.0,
        "training.distill_iterations": "auto",
        "execution.seed": 42, "execution.learning_rate": 1e-3, "execution.scheduler": "Default"}
    assert record.held_out_nll == pytest.approx(result.summary.final_metrics["val_loss"])
    from export.bundle_writer import training_record  # a run validated outside Lightning states its own

    assert training_record(result.last_checkpoint, checkpoint, held_out_nll=1.25).held_out_nll == 1.25
    copied = tmp_path / "elsewhere" / "last.ckpt"  # outside its run: no summary to read
    copied.parent.mkdir()
    shutil.copyfile(result.last_checkpoint, copied)
    assert training_record(copied, checkpoint) is None
    np.testing.assert_array_equal(bundle.probe, probe)
    import onnxruntime as ort

    diffraction = verification_inputs(scan32, N, 1, n_groups=8)
    scale = np.full(8, checkpoint.training_scale, np.float32)
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, {"diffraction": diffraction, "scale": scale}),
                         _eager(generator, diffraction, scale), strict=True):
        assert np.abs(got - want).max() <= FP32_TOLERANCE


def test_a_learned_probe_is_the_bundles_probe(scan32: Path, tmp_path: Path) -> None:
    """``probe_trainable``: probe.npy is the checkpoint's learned probe, written as the checkpoint holds
    it (normalised; export does not rescale it), not the scan's."""
    from export.bundle_writer import export_checkpoint
    from ptycho_torch import physics
    from ptycho_torch.config import PyTorchExecutionConfig
    from ptycho_torch.data import RawData
    from training.trainer import train

    scan = RawData.from_file(scan32)
    training = TrainingConfig(model=ModelConfig(N=N, gridsize=1, n_filters_scale=1), train_data_file=scan32,
                              batch_size=16, n_groups=32, probe_trainable=True, probe_learning_rate=1e-2,
                              output_dir=tmp_path / "run")
    execution = PyTorchExecutionConfig(accelerator="cpu", max_steps=2, logger_backend="none",
                                       enable_progress_bar=False)
    result = train(training, execution, train_data=scan)
    _, _, learned = load_generator(result.last_checkpoint)
    bundle = export_checkpoint(result.last_checkpoint, tmp_path / "bundle")
    np.testing.assert_array_equal(bundle.probe, learned)
    start = physics.normalize_probe(torch.as_tensor(scan.probeGuess))[0].numpy()
    assert np.abs(bundle.probe - start).max() > 1e-3
    assert bundle.manifest.training is not None and bundle.manifest.training.recipe["training.probe_trainable"]


def test_the_pixel_size_comes_from_the_flag_or_the_training_scan_and_they_must_agree(
        exported: Exported, data_dir: Path, tmp_path: Path) -> None:
    from export.bundle_writer import training_pixel_size

    assert exported.bundle.pixel_size_m == (2e-8 if exported.bundle.gridsize == 2 else None)
    scan = load_siemens_star(data_dir / "siemens-star-small.npz.bz2", N)
    scan.metadata["pixel_size_m"] = 1e-8
    path = scan.to_file(tmp_path / "scan.npz")

    def record(train_data_file: Path | None, pixel_size_m: float | None = None) -> CheckpointRecord:
        return CheckpointRecord(training=TrainingConfig(model=ModelConfig(N=N), train_data_file=train_data_file),
                                training_scale=1.0, intensity_scale=1.0, pixel_size_m=pixel_size_m)

    assert training_pixel_size(None, record(path)) == 1e-8  # an older checkpoint: the scan file says
    assert training_pixel_size(None, record(tmp_path / "gone.npz", 1e-8)) == 1e-8  # the checkpoint says
    assert training_pixel_size(1.001e-8, record(path)) == 1.001e-8
    assert training_pixel_size(3e-8, record(None)) == 3e-8
    assert training_pixel_size(None, record(tmp_path / "gone.npz")) is None
    with pytest.raises(ExportError, match=r"`--pixel-size-m`: the given pixel size 3e-08 m differs from the "
                                          r"training scan scan.npz's training pixel size 1e-08 m"):
        training_pixel_size(3e-8, record(path))
    with pytest.raises(ExportError, match="`--pixel-size-m` must be the object pixel size in metres"):
        ExportOptions(pixel_size_m=0.0)


def test_torch_and_onnx_runners_give_the_same_object(exported: Exported, scan32: Path) -> None:
    """One reconstruct implementation: the same scan through the pipeline with the network run by
    onnxruntime (the bundle) and by torch (the generator it was exported from)."""
    from ptycho_torch.data import RawData
    from ptycho_torch.pipeline import reconstruct
    from ptycho_torch.torch_runner import TorchRunner
    from serving.engine import Engine

    scan = RawData.from_file(scan32).subset(np.arange(120))
    positions = scan.positions
    bundle = exported.bundle
    onnx = reconstruct(Engine(bundle, providers=["cpu"], warmup=False), scan.diff3d, positions, probe=scan.probeGuess)
    eager = reconstruct(TorchRunner(exported.generator, training_scale=bundle.training_scale, probe=bundle.probe,
                                    stitch_M=bundle.stitch_M, bad_pixels=bundle.bad_pixels, batch_size=16),
                        scan.diff3d, positions, probe=scan.probeGuess)
    assert (eager.n_groups, eager.origin, eager.scale) == (onnx.n_groups, onnx.origin, onnx.scale)
    assert eager.probe_difference == pytest.approx(onnx.probe_difference)
    np.testing.assert_array_equal(eager.coverage, onnx.coverage)
    covered = onnx.coverage > 0
    assert covered.sum() > 1000
    difference = np.abs(eager.amplitude * np.exp(1j * eager.phase) - onnx.amplitude * np.exp(1j * onnx.phase))
    assert difference[covered].max() <= 2 * FP32_TOLERANCE * max(1.0, onnx.amplitude.max())


def test_export_flags_are_the_export_options_fields_with_their_docstrings(tmp_path):
    import argparse
    import dataclasses

    from export import cli as export_cli
    from ptycho_torch.config_flags import _plain, field_docs, flag_values

    parser = argparse.ArgumentParser()
    export_cli.configure(parser)
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(ExportOptions):
        assert actions[f"options.{f.name}"].help.startswith(_plain(field_docs(ExportOptions)[f.name])), f.name
    assert {"--zip", "--name", "--version", "--opset", "--fp16", "--max-batch-size", "--sign", "--pixel-size-m",
            "--bad-pixel-mask"} <= {option for a in parser._actions for option in a.option_strings}
    required = ["--checkpoint", "c.ckpt", "--out", str(tmp_path / "b")]
    assert ExportOptions(**flag_values(parser.parse_args(required), "options", given_only=False)) == ExportOptions()
    given = parser.parse_args([*required, "--zip", "--name", "beamline", "--version", "3", "--stitch-m", "8",
                               "--bad-pixel-mask", "mask.npy", "--tolerance", "1e-3"])
    assert ExportOptions(**flag_values(given, "options", given_only=False)) == ExportOptions(
        zip=True, name="beamline", version=3, stitch_M=8, bad_pixels=Path("mask.npy"), tolerance=1e-3)


def test_the_trained_neighbor_count_is_recorded_and_is_the_reconstruct_default(scan32: Path, tmp_path: Path) -> None:
    """``train --neighbor-count 6`` at gridsize 2 -> the manifest records K = 6 -> every runner groups with
    it when a request gives none; a bundle written before K was recorded falls back to max(4, C)."""
    from ptycho_torch.bundle import load_bundle
    from ptycho_torch.data import RawData
    from ptycho_torch.pipeline import reconstruct
    from ptycho_torch.plan import ReconstructOptions
    from ptycho_torch.torch_runner import TorchRunner
    from serving.engine import Engine

    run = tmp_path / "run"
    assert cli_main(["train", "--train-data", str(scan32), "--output-dir", str(run), "--n", str(N), "--gridsize", "2",
                     "--neighbor-count", "6", "--n-filters-scale", "1", "--batch-size", "8", "--epochs", "1",
                     "--max-steps", "2", "--accelerator", "cpu", "--logger", "none", "--no-progress-bar"]) == 0
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert cli_main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "bundle")]) == 0
    bundle = load_bundle(tmp_path / "bundle")
    assert json.loads((bundle.root / "manifest.json").read_text())["neighbor_count"] == 6 == bundle.neighbor_count
    assert TorchRunner.from_checkpoint(checkpoint).model.neighbor_count == 6

    scan = RawData.from_file(scan32).subset(np.arange(120))
    positions = scan.positions
    engine = Engine(bundle, providers=["cpu"], warmup=False)
    default = reconstruct(engine, scan.diff3d, positions)
    six = reconstruct(engine, scan.diff3d, positions, options=ReconstructOptions(neighbor_count=6))
    four = reconstruct(engine, scan.diff3d, positions, options=ReconstructOptions(neighbor_count=4))
    np.testing.assert_array_equal(default.amplitude, six.amplitude)
    assert not np.array_equal(default.amplitude, four.amplitude)  # K changes which neighbours form a group

    manifest = json.loads((bundle.root / "manifest.json").read_text())
    del manifest["neighbor_count"]  # as written before K was recorded
    (bundle.root / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(bundle.root).neighbor_count == 4  # max(4, C)
    manifest["neighbor_count"] = 3
    (bundle.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"`neighbor_count` must be >= channels = 4, got 3"):
        load_bundle(bundle.root)


@pytest.mark.parametrize("batch_size", [0, -3])
def test_the_torch_runner_refuses_a_batch_size_that_is_no_positive_integer(exported: Exported, batch_size: int) -> None:
    from ptycho_torch.errors import ConfigError
    from ptycho_torch.torch_runner import TorchRunner

    with pytest.raises(ConfigError, match=f"`batch_size` must be a positive integer, got {batch_size}"):
        TorchRunner(exported.generator, training_scale=1.0, batch_size=batch_size)
