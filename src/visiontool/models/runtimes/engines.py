"""Running an exported network: OpenVINO's compiled model or an ONNX Runtime session.

An engine maps numpy inputs (in the export's input order; float32, or int64 for token ids) to
its outputs as a list of numpy arrays; ``fixed_batch`` is the first input's static batch size
(None when dynamic). Both run float32 on the CPU: OpenVINO's CPU plugin otherwise picks bfloat16
on CPUs with AVX512-BF16/AMX (measured here: DETR logits off by 0.07), so the inference
precision hint is pinned to f32.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

# the file each runtime's export is read from (inside an export directory)
MODEL_FILES = {"openvino": "model.xml", "onnxruntime": "model.onnx"}
ONNX_OPSET = 17


def runtime_version(runtime: str) -> str:
    if runtime == "openvino":
        import openvino

        return str(openvino.get_version() if hasattr(openvino, "get_version") else openvino.__version__)
    import onnxruntime

    return str(onnxruntime.__version__)


class OpenVINOEngine:
    def __init__(self, path: Path):
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        first = self.compiled.inputs[0].get_partial_shape()
        self.fixed_batch = first[0].get_length() if first.rank.is_static and first[0].is_static else None

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer([_as_input(a) for a in inputs])
        return [np.array(result[out]) for out in self.compiled.outputs]


class OnnxRuntimeEngine:
    def __init__(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # no "removing initializer" chatter on stderr
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        first = self.session.get_inputs()[0].shape
        self.fixed_batch = first[0] if first and isinstance(first[0], int) else None

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = {n: _as_input(a) for n, a in zip(self.names, inputs)}
        return list(self.session.run(None, feed))


def _as_input(a) -> np.ndarray:
    """An engine input: float arrays as contiguous float32, integer ones (token ids) as int64."""
    a = np.asarray(a)
    return np.ascontiguousarray(a, dtype=np.int64 if a.dtype.kind in "iub" else np.float32)


def open_engine(runtime: str, directory: Path):
    """The engine for the export in ``directory`` (raises whatever the runtime raises for a bad file)."""
    path = Path(directory) / MODEL_FILES[runtime]
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing")
    return OpenVINOEngine(path) if runtime == "openvino" else OnnxRuntimeEngine(path)


def export_network(module, example: tuple, runtime: str, directory: Path, input_names: list[str],
                   output_names: list[str], dynamic_axes: dict[str, dict[int, str]]) -> list[str]:
    """Export torch ``module`` (eval; called with ``example``) into ``directory`` for ``runtime``;
    returns the file names written.

    * OpenVINO: ``openvino.convert_model(module, example_input=...)`` straight from torch (no
      ONNX step), saved uncompressed (float32 weights);
    * ONNX: ``torch.onnx.export(dynamo=False)`` (TorchScript exporter, opset 17): measured on
      the tiny DETR 0.6 s against 7.9 s for ``dynamo=True``, both within 1e-5 of torch.
    """
    import torch

    from visiontool.models.hf_hub import transformers_errors_only

    directory = Path(directory)
    if runtime == "openvino":
        import openvino as ov

        shapes = []
        for name, t in zip(input_names, example):
            dims = [-1 if i in dynamic_axes.get(name, {}) else int(s) for i, s in enumerate(t.shape)]
            shapes.append(ov.PartialShape(dims))
        import warnings

        with warnings.catch_warnings(), torch.no_grad(), no_openvino_telemetry(), transformers_errors_only():
            warnings.simplefilter("ignore")  # the tracer's notes on shape-constant Python branches
            om = ov.convert_model(module, example_input=example if len(example) > 1 else example[0], input=shapes)
        for out, name in zip(om.outputs, output_names):
            out.get_tensor().set_names({name})
        ov.save_model(om, str(directory / "model.xml"), compress_to_fp16=False)
        return ["model.xml", "model.bin"]
    import warnings

    with warnings.catch_warnings(), torch.no_grad(), transformers_errors_only():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(directory / "model.onnx"), input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET,
                          dynamo=False)
    return ["model.onnx"]


@contextmanager
def no_openvino_telemetry() -> Iterator[None]:
    """OpenVINO's model converter without its telemetry, for the block.

    ``openvino.convert_model`` reports each conversion to Google Analytics unless the user opted
    out (``openvino_telemetry``: consent is assumed when ``~/intel/openvino_telemetry`` is
    absent). It sends from a forked child process; measured here (no network, a test process
    with Ray's SIGTERM handler installed) such a child deadlocked in ``getaddrinfo`` after the
    fork and, its SIGTERM caught by the inherited Python handler, never exited, so the parent
    hung at exit joining it. A command-line tool must not phone home on the user's behalf
    either: the converter's own modules get the stub OVC uses when ``openvino_telemetry`` is not
    installed."""
    import importlib

    try:
        stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
        modules = [importlib.import_module(f"openvino.tools.ovc.{m}") for m in ("telemetry_utils", "convert_impl")]
    except ImportError:  # another layout: nothing to switch off
        yield
        return
    saved = [(m, m.__dict__["tm"]) for m in modules if "tm" in m.__dict__]
    for m, _ in saved:
        m.tm = stub
    try:
        yield
    finally:
        for m, tm in saved:
            m.tm = tm


@contextmanager
def onnx_linspace_keeps_dtype() -> Iterator[None]:
    """While exporting to ONNX, ``aten::linspace`` casts to the dtype it was asked for.

    torch's TorchScript exporter computes linspace from Python-float bounds in double and
    ignores its ``dtype``; in a static-shape trace of Deformable DETR (its reference points:
    ``linspace(0.5, h - 0.5, h, dtype=float32)``) the double then reaches ``GridSample``'s grid,
    which ONNX Runtime implements for float only ("Could not find an implementation for
    GridSample(16)"). It also gives one step its value: torch's symbolic divides by ``steps - 1``,
    so a one-point ``linspace`` was NaN in the graph (a deformable-attention level of height or
    width 1: measured on a tiny Grounding DINO at 64x95, whose export was then refused by its
    check). The symbolic is registered for the duration only (process-wide: the exporter has no
    per-call table); OpenVINO's own converter from torch is unaffected."""
    import torch

    try:
        from torch.onnx._internal.torchscript_exporter import _type_utils, symbolic_helper as sh
        from torch.onnx._internal.torchscript_exporter import symbolic_opset9 as opset9
    except ImportError:  # torch < 2.9
        from torch.onnx import _type_utils, symbolic_helper as sh, symbolic_opset9 as opset9

    def linspace(g, start, end, steps, dtype, *rest):
        # opset9's, but for one step: it divides by steps - 1, so linspace(a, a, 1), a level of
        # deformable attention one feature high or wide, was NaN (torch gives [a])
        one = g.op("Constant", value_t=torch.tensor(1, dtype=torch.int64))
        intervals = g.op("Max", opset9.sub(g, steps, one), one)
        step = opset9.div(g, opset9.sub(g, end, start), intervals)
        out = opset9.add(g, opset9.mul(g, sh._arange_helper(g, steps, None), step), start)
        if sh._is_none(dtype):
            return out
        want = sh._maybe_get_const(dtype, "i")
        if sh._is_value(want):
            return out
        return g.op("Cast", out, to_i=_type_utils.JitScalarType(want).onnx_type())

    torch.onnx.register_custom_op_symbolic("aten::linspace", linspace, ONNX_OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::linspace", ONNX_OPSET)
