"""The backend contract: a new backend is one Backend value and one registration, and every part uses it.

A toy backend that writes ``torch.export`` programs (``.pt2``) and runs them with PyTorch is
registered at run time; ``convert`` makes its artifact, names it, checks it against the golden
vectors, and ``parity`` runs it through the toy's runtime - without any other file knowing it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

import converters
import espnet_mobile as em
from converters.base import Backend, ConversionError, ConversionRequest, ConversionResult, RuntimeSpec, always
from espnet_mobile import bundle as B
from espnet_mobile.parity import check_parity

MODEL = "espnet_p_2_q_3"
SIZE = (32, 64)
LOADS: list[str] = []  # runner loads, to see parity really went through the toy runtime


def _convert(req: ConversionRequest) -> ConversionResult:
    if req.precision != "fp32":
        raise ConversionError(f"toy makes fp32 only, not {req.precision}")
    start = time.perf_counter()
    program = torch.export.export(req.module.eval(), (req.example_input,), strict=False)
    with converters.base.atomic_output(req.out_path) as tmp:
        torch.export.save(program, tmp)
    return ConversionResult(req.out_path, "toy", req.precision, ["CPU"], True, {"torch": torch.__version__},
                            time.perf_counter() - start)


def _load(path: Path, _artifact: dict):
    LOADS.append(path.name)
    module = torch.export.load(path).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


TOY = Backend(
    name="toy", extension="pt2", delegates={"cpu": ("fp32",)}, convert=_convert,
    tool_versions=lambda _d, _p: {"torch": torch.__version__},
    runtimes=lambda: [RuntimeSpec("toy-runtime", "CPU", "PyTorch running the exported program", ("toy",), ("cpu",),
                                  _load, always, primary=True)],
)


@pytest.fixture
def toy_backend():
    converters.register(TOY)
    try:
        yield TOY
    finally:
        converters.unregister("toy")


def test_registry_lists_each_packaged_backend_once_and_refuses_duplicates(toy_backend) -> None:
    assert converters.names()[:3] == ("executorch", "coreml", "tflite")
    assert converters.names()[-1] == "toy" and converters.backend("toy") is TOY
    with pytest.raises(ValueError, match="already registered"):
        converters.register(TOY)
    with pytest.raises(converters.UnknownBackendError, match="choose from executorch, coreml, tflite, toy"):
        converters.backend("onnx")
    with pytest.raises(ValueError, match="packaged backend"):
        converters.unregister("tflite")
    assert converters.for_qat("xnnpack").name == "executorch"


def test_toy_backend_converts_checks_and_runs_through_every_part(toy_backend, tmp_path: Path, capsys) -> None:
    from espnet_mobile import convert

    torch.manual_seed(0)
    weights = tmp_path / "random.pth"
    torch.save(em.build_model(em.get_entry(MODEL)).state_dict(), weights)
    code = convert.main(["--model", MODEL, "--weights", str(weights), "--input-size", f"{SIZE[0]}x{SIZE[1]}",
                         "--target", "toy", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    bundle = tmp_path / "out" / MODEL
    manifest = B.load_manifest(bundle)
    [art] = manifest["artifacts"]
    assert art["file"] == f"{MODEL}_toy_fp32.pt2" and art["target"] == "toy" and art["delegate"] == "cpu"
    # convert's quick check ran the artifact through the toy's primary runtime
    assert art["quick_check"]["pixel_agreement"] == 1.0 and art["quick_check"]["max_rel_abs_error"] < 1e-5
    LOADS.clear()
    result = check_parity(bundle, synthetic=2, weights=str(weights), log=lambda *_: None)
    [record] = result.records
    assert (record.runtime, record.executed, record.passed) == ("toy-runtime", True, True)
    assert LOADS == [art["file"]]


def test_unknown_target_is_refused_by_the_command(capsys) -> None:
    from espnet_mobile import convert

    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--target", "onnx"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
