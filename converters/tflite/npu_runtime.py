"""LiteRT NPU dispatch, run here through Intel OpenVINO's CPU graph backend.

**This exercises the NPU dispatch code path, not NPU numerics.** There is no NPU
on this machine. ai-edge-litert 2.3.0 ships, under
``ai_edge_litert/vendors/intel_openvino/``, a compiler plugin
(``libLiteRtCompilerPlugin_IntelOpenvino.so``) and a dispatch library
(``libLiteRtDispatch_IntelOpenvino.so``). With ``HardwareAccelerator.NPU`` the
default ``Environment`` finds both; ``CompiledModel`` then JIT-compiles the
plain ``.tflite``: the plugin partitions the graph and compiles each partition
with OpenVINO into vendor bytecode embedded in the model, and the NPU
accelerator runs those partitions through the dispatch API (DispatchDelegate,
invocation context, tensor buffers). ``IntelOpenVinoOptions.graph_backend``
selects the OpenVINO device the partitions target; ``CPU`` makes the whole
path run on this machine. Everything up to the device plugin is the code an
Intel-NPU laptop runs; the arithmetic is OpenVINO's CPU plugin, not an NPU's.

Both vendor libraries link ``libopenvino.so.<ver>`` (2631 = OpenVINO 2026.3.1
for ai-edge-litert 2.3.0), which the ``openvino`` wheel of the same version
provides in ``openvino/libs``. The loader must see that folder when the
process starts, so inference runs in a child process with ``LD_LIBRARY_PATH``
set (see :class:`converters.tflite.gpu_runtime.CompiledModelProcess`).

Precision: OpenVINO's CPU plugin computes in bf16 by default on CPUs with
AVX512-BF16/AMX, and in ai-edge-litert 2.3.0 the dispatch side does not pass
``configs_map`` (e.g. ``INFERENCE_PRECISION_HINT=f32``) to ``import_model``. With
``exact_fp32=True`` (default) the child caps oneDNN's ISA below BF16
(``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``), which makes the CPU plugin compute
in fp32; ``exact_fp32=False`` keeps the plugin's default (bf16 where
available, ~1e-2 relative error).

    from converters.tflite import npu_runtime
    ok, why = litert_npu.npu_dispatch_status()
    with litert_npu.load_runner("m.tflite") as run:
        y = run(x)            # run.label says what this is and is not
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from converters.tflite.gpu_runtime import CompiledModelProcess, GpuRunError

LABEL = ("LiteRT NPU dispatch via the Intel OpenVINO plugin on OpenVINO's CPU graph backend: "
         "exercises the NPU dispatch code path, not NPU numerics")
VENDOR = "intel_openvino"
#: |NPU-path - CPU| / max|CPU| accepted with exact_fp32 (OpenVINO CPU in fp32 vs XNNPACK).
FP32_REL_TOL = 1e-4
#: Same with OpenVINO's default precision (bf16 on AVX512-BF16/AMX CPUs).
DEFAULT_PRECISION_REL_TOL = 5e-2
_MAX_ISA_BELOW_BF16 = "AVX512_CORE_VNNI"


class NpuDispatchUnavailableError(RuntimeError):
    """The NPU dispatch path cannot run here; the message gives the exact reason."""


def _litert_dir() -> Path:
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        raise NpuDispatchUnavailableError("ai-edge-litert is not installed (pip install ai-edge-litert==2.3.0)")
    return Path(next(iter(spec.submodule_search_locations)))


def vendor_libraries() -> dict[str, Path]:
    """The OpenVINO dispatch library and compiler plugin shipped in the ai-edge-litert wheel."""
    root = _litert_dir() / "vendors" / VENDOR
    libs = {"dispatch": root / "dispatch" / "libLiteRtDispatch_IntelOpenvino.so",
            "compiler": root / "compiler" / "libLiteRtCompilerPlugin_IntelOpenvino.so"}
    for what, path in libs.items():
        if not path.is_file():
            raise NpuDispatchUnavailableError(
                f"the ai-edge-litert wheel at {_litert_dir()} has no OpenVINO {what} library ({path}); "
                "NPU dispatch needs the Linux x86_64 wheel of ai-edge-litert 2.3.0")
    return libs


def required_openvino_sonames(library: Path) -> list[str]:
    """``libopenvino*.so.<ver>`` names a vendor library links (read from its bytes)."""
    data = Path(library).read_bytes()
    return sorted({m.decode() for m in re.findall(rb"libopenvino[a-z_]*\.so\.\d+", data)})


def openvino_libs_dir() -> Path:
    """``openvino/libs`` of the installed openvino wheel."""
    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        raise NpuDispatchUnavailableError(
            "the openvino package is not installed; the OpenVINO dispatch library links libopenvino.so "
            "from it: pip install openvino==2026.3.1 (the version ai-edge-litert 2.3.0 was built against)")
    root = Path(next(iter(spec.submodule_search_locations)))
    libs = root / "libs"
    return libs if libs.is_dir() else root


def npu_dispatch_status() -> tuple[bool, str]:
    """(True, description) when the OpenVINO NPU dispatch path can run here, else (False, exact reason)."""
    try:
        libs = vendor_libraries()
        ov_dir = openvino_libs_dir()
    except NpuDispatchUnavailableError as exc:
        return False, str(exc)
    missing = []
    for lib in libs.values():
        for soname in required_openvino_sonames(lib):
            if not (ov_dir / soname).exists():
                missing.append(soname)
    if missing:
        have = sorted(p.name for p in ov_dir.glob("libopenvino.so.*"))
        want = sorted(set(missing))
        version = ""
        core = next((w for w in want if w.startswith("libopenvino.so.")), "")
        if m := re.match(r"libopenvino\.so\.(\d{4})(\d)(\d)$", core):
            version = f" (OpenVINO {m[1]}.{m[2]}.{m[3]}: pip install openvino=={m[1]}.{m[2]}.{m[3]})"
        return False, (f"the OpenVINO dispatch library needs {', '.join(want)}{version}, but {ov_dir} has "
                       f"{', '.join(have) or 'no libopenvino'}")
    if not (ov_dir / "libopenvino_intel_cpu_plugin.so").exists():
        return False, f"{ov_dir} has no OpenVINO CPU plugin (libopenvino_intel_cpu_plugin.so)"
    return True, f"OpenVINO dispatch ({libs['dispatch'].name}) with {ov_dir}"


def npu_env(*, exact_fp32: bool = True, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the child: OpenVINO's libraries on the loader path (and oneDNN capped for fp32)."""
    ok, why = npu_dispatch_status()
    if not ok:
        raise NpuDispatchUnavailableError(why)
    env = dict(os.environ if base is None else base)
    ov_dir = str(openvino_libs_dir())
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [ov_dir, env.get("LD_LIBRARY_PATH", "")] if p)
    if exact_fp32:
        env["ONEDNN_MAX_CPU_ISA"] = _MAX_ISA_BELOW_BF16
    return env


class NpuDispatchRunner(CompiledModelProcess):
    """A ``.tflite`` JIT-compiled by the OpenVINO compiler plugin and run through LiteRT's NPU
    dispatch on the OpenVINO ``device`` (default CPU). See :data:`LABEL`."""

    kind = "LiteRT NPU dispatch"
    label = LABEL

    def __init__(self, path: str | Path, *, device: str = "CPU", exact_fp32: bool = True,
                 cpu_fallback: bool = False, openvino_config: dict[str, str] | None = None, nhwc: bool = False,
                 timeout: float = 600.0) -> None:
        spec = {"accel": "npu", "cpu_fallback": cpu_fallback, "openvino_device": device.upper(),
                "openvino_config": dict(openvino_config or {})}
        self.device = device.upper()
        self.exact_fp32 = exact_fp32
        super().__init__(path, spec, npu_env(exact_fp32=exact_fp32), nhwc=nhwc, timeout=timeout)
        log = self.log_text()
        if "DispatchDelegate" not in log or "npu_selected" not in self.partition:
            self.close()
            raise NpuDispatchUnavailableError(
                f"{Path(path).name} compiled, but the log shows no NPU dispatch (compiler plugin partitions / "
                "DispatchDelegate); LiteRT ran it some other way")
        self.info["label"] = LABEL
        self.info["openvino_device"] = self.device


def load_runner(path: str | Path, **kwargs: Any) -> NpuDispatchRunner:
    """Compile ``path`` for LiteRT's NPU accelerator with the OpenVINO plugin (CPU graph backend) and
    return a runner; keyword arguments as for :class:`NpuDispatchRunner`. Raises
    :class:`NpuDispatchUnavailableError` with the exact reason when the path cannot run here."""
    try:
        return NpuDispatchRunner(path, **kwargs)
    except GpuRunError as exc:  # the child's compile/dispatch failure
        raise NpuDispatchUnavailableError(str(exc)) from exc


def run_tflite_npu(path: str | Path, x: np.ndarray, **kwargs: Any) -> np.ndarray:
    """One inference through the NPU dispatch path (exercises dispatch, not NPU numerics)."""
    with load_runner(path, **kwargs) as run:
        return run(x)


def compare_with_cpu(path: str | Path, x: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    """NPU-dispatch output vs the CPU interpreter (converters.tflite.run_tflite) on one input."""
    from converters.tflite import run_tflite

    cpu = run_tflite(path, x)
    with load_runner(path, **kwargs) as run:
        out = run(x)
        partition = dict(run.partition)
    diff = np.abs(out - cpu)
    scale = float(np.abs(cpu).max()) or 1.0
    report = {"label": LABEL, "max_abs_error": float(diff.max()), "max_rel_error": float(diff.max()) / scale,
              "partition": partition}
    if cpu.ndim == 4 and cpu.shape[1] > 1:
        report["argmax_agreement"] = float((cpu.argmax(1) == out.argmax(1)).mean())
    return report


# --------------------------------------------------------------------------- registry


def _load(path: Path, artifact: dict) -> NpuDispatchRunner:
    return load_runner(path)


from converters.base import RuntimeSpec  # noqa: E402 - the registry reads this module last

RUNTIMES = [RuntimeSpec("litert-npu-dispatch", "NPU", LABEL, ("tflite",), ("cpu",), _load, npu_dispatch_status)]
