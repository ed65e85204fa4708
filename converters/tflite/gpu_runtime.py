"""LiteRT GPU (WebGPU over Vulkan) on this machine, through Mesa's CPU Vulkan driver (lavapipe).

There is no GPU here, but ai-edge-litert's GPU accelerator
(``libLiteRtWebGpuAccelerator.so``: Dawn/WebGPU on Vulkan) runs on any Vulkan
device. ``setup_lavapipe.sh`` unpacks Mesa 25's lavapipe into ``<venv>/lavapipe``
(no system install); this module points the Vulkan loader at it
(``VK_ICD_FILENAMES``, ``LD_LIBRARY_PATH``) in a *child* Python process, since
the loader reads them when the process first loads Vulkan, and runs a
``.tflite`` with ``CompiledModel`` on ``HardwareAccelerator.GPU``. A crashing
GPU kernel (it happens, see below) kills the child, not the caller.

Precision: the GPU accelerator computes in fp16 by default; ``enforce_fp32=True``
sets ``GpuOptions.enforce_f32`` (ai-edge-litert 2.3.0) so it computes in fp32.
The shader code is the one shipped to devices; lavapipe stands in for the
device's Vulkan driver, so this checks op coverage and numerics of the LiteRT
GPU kernels, not a phone GPU's speed.

Known limits of the WebGPU accelerator in ai-edge-litert 2.3.0 (found on
lavapipe; :func:`gpu_friendly` rewrites them away, exactly):

* grouped CONV_2D (1 < groups < in_channels) whose input or output channels per
  group are not a multiple of 4 either aborts the process (SIGILL; e.g. 32->24
  1x1 with 4 groups = 8 in / 6 out per group, 50->10 3x3 with 10 groups) or
  silently computes garbage (e.g. 256->64 3x3 with 64 groups = 4 in / 1 out,
  16->24 1x1 with 4 groups = 4 in / 6 out). Multiples of 4 (8/4, 8/8, 32/32,
  128/32) are correct. Rewrite (exact, cheapest by MACs): a dense conv with a
  block-diagonal weight; for one output per group a depth-wise conv plus a 0/1
  1x1 group-sum conv; for inputs per group a multiple of 4, outputs per group
  padded to a multiple of 4 with zero weights plus a 0/1 1x1 channel selection.
* RESHAPE to / TRANSPOSE of 5-D tensors (a channel shuffle written as
  ``reshape(1, g, C/g, H, W).transpose(1, 2)``) is rejected ("Tensor dimensions
  must be less than 5"), so without CPU fallback the model does not compile.
  Rewrite: the same permutation as a 1x1 conv with a 0/1 permutation weight.
* PAD followed by a VALID AVERAGE_POOL_2D (what ``nn.AvgPool2d(3, 2, 1)`` with
  ``count_include_pad=True`` converts to) still differs from the CPU on border
  outputs (up to the full value; interior exact): the GPU does not count the
  padding. The deployable graph's ``AvgPool3x3s2`` (a depth-wise conv with
  weights 1/9) agrees with the CPU everywhere, so nothing is needed there.

    from converters.tflite import gpu_rewrites, gpu_runtime
    gpu_runtime.lavapipe_status()                   # (ready, reason)
    run = gpu_runtime.load_runner("m.tflite", enforce_fp32=False)
    y = run(x); run.close()
    module = gpu_rewrites.gpu_friendly(deployable)  # then convert to .tflite as usual
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

LAVAPIPE_ENV = "ESPNET_MOBILE_LAVAPIPE"
SETUP_SCRIPT = Path(__file__).resolve().parent / "setup_lavapipe.sh"
#: Max |GPU - CPU| relative to max |CPU| accepted for the default (fp16) GPU path.
FP16_REL_TOL = 1e-2
#: Same for ``enforce_fp32=True``.
FP32_REL_TOL = 1e-4


class GpuUnavailableError(RuntimeError):
    """No Vulkan driver for the LiteRT GPU accelerator is set up."""


class GpuRunError(RuntimeError):
    """The GPU child process failed or crashed (message carries its log)."""


# --------------------------------------------------------------------------- lavapipe


def lavapipe_dir() -> Path:
    """Where setup_lavapipe.sh puts the driver: ``$ESPNET_MOBILE_LAVAPIPE`` or ``<venv>/lavapipe``."""
    env = os.environ.get(LAVAPIPE_ENV)
    return Path(env) if env else Path(sys.prefix) / "lavapipe"


def lavapipe_status(path: str | Path | None = None) -> tuple[bool, str]:
    """(True, description) when lavapipe is unpacked and loadable, else (False, why not)."""
    root = Path(path) if path else lavapipe_dir()
    icd = root / "icd.json"
    if not icd.is_file():
        return False, (f"lavapipe is not set up ({icd} missing); run `bash {SETUP_SCRIPT}` "
                       "(downloads Mesa 25 from Debian bookworm-backports into the venv, no system install)")
    try:
        lib = Path(json.loads(icd.read_text())["ICD"]["library_path"])
    except (ValueError, KeyError) as exc:
        return False, f"{icd} is not a Vulkan ICD manifest ({exc}); re-run {SETUP_SCRIPT} with FORCE=1"
    if not lib.is_file():
        return False, f"{icd} points at {lib}, which is missing; re-run {SETUP_SCRIPT} with FORCE=1"
    if not (root / "lib").is_dir():
        return False, f"{root}/lib is missing; re-run {SETUP_SCRIPT} with FORCE=1"
    return True, f"lavapipe at {root}"


def setup_lavapipe(dest: str | Path | None = None, *, force: bool = False) -> Path:
    """Run setup_lavapipe.sh (idempotent) and return the folder it filled."""
    dest = Path(dest) if dest else lavapipe_dir()
    env = dict(os.environ, FORCE="1" if force else "0")
    proc = subprocess.run(["bash", str(SETUP_SCRIPT), str(dest)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise GpuUnavailableError(f"setup_lavapipe.sh failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return dest


def vulkan_env(base: dict[str, str] | None = None, lavapipe: str | Path | None = None) -> dict[str, str]:
    """An environment for a child process whose Vulkan loader sees only lavapipe."""
    root = Path(lavapipe) if lavapipe else lavapipe_dir()
    ok, why = lavapipe_status(root)
    if not ok:
        raise GpuUnavailableError(why)
    env = dict(os.environ if base is None else base)
    icd = str(root / "icd.json")
    env["VK_ICD_FILENAMES"] = icd  # loader < 1.3.234
    env["VK_DRIVER_FILES"] = icd  # newer loaders
    libdir = str((root / "lib").resolve())
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [libdir, env.get("LD_LIBRARY_PATH", "")] if p)
    return env


# --------------------------------------------------------------------------- child process protocol
#
# The parent writes a request: one JSON line {"shape": [...]} then the float32
# bytes. The child answers one JSON line {"ok": true, "shape": [...], "ms": t}
# then the float32 bytes, or {"ok": false, "error": "..."}. The first line the
# child writes, after compiling the model, describes it (or reports the error).


def _write_msg(stream, header: dict[str, Any], payload: bytes = b"") -> None:
    stream.write(json.dumps(header).encode() + b"\n")
    if payload:
        stream.write(payload)
    stream.flush()


def _read_exact(stream, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _options(accel: str, enforce_fp32: bool, cpu_fallback: bool, openvino_device: str | None,
             openvino_config: dict[str, str] | None) -> Any:
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import GpuOptions, Options

    flags = {"gpu": HardwareAccelerator.GPU, "npu": HardwareAccelerator.NPU, "cpu": HardwareAccelerator.CPU}[accel]
    if cpu_fallback and accel != "cpu":
        flags |= HardwareAccelerator.CPU
    kwargs: dict[str, Any] = {"hardware_accelerators": flags}
    if accel == "gpu":
        kwargs["gpu_options"] = GpuOptions(enforce_f32=enforce_fp32)
    if accel == "npu":
        from ai_edge_litert.intel_openvino_options import IntelOpenVinoGraphBackend
        from ai_edge_litert.options import IntelOpenVinoOptions

        backend = IntelOpenVinoGraphBackend[(openvino_device or "NPU").upper()]
        kwargs["intel_openvino_options"] = IntelOpenVinoOptions(graph_backend=backend,
                                                                configs_map=dict(openvino_config or {}))
    return Options(**kwargs)


_LOCK_RETRIES = 3


def _serve(model: str, spec: dict[str, Any]) -> int:
    """Child side: compile ``model`` as ``spec`` says and answer run requests until EOF."""
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by native code goes to the log, not the protocol
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    try:
        from ai_edge_litert.compiled_model import CompiledModel

        options = _options(spec["accel"], bool(spec.get("enforce_fp32")), bool(spec.get("cpu_fallback")),
                           spec.get("openvino_device"), spec.get("openvino_config"))
        t0 = time.perf_counter()
        cm = CompiledModel.from_file(model, options=options)
        key = next(iter(cm.get_signature_list()))
        index = cm.get_signature_index(key)
        (_, in_detail), = cm.get_input_tensor_details(key).items()
        (_, out_detail), = cm.get_output_tensor_details(key).items()
        in_shape = [int(d) for d in in_detail["shape"]]
        out_shape = [int(d) for d in out_detail["shape"]]
        inputs = cm.create_input_buffers(index)
        outputs = cm.create_output_buffers(index)
        info = {"ok": True, "fully_accelerated": bool(cm.is_fully_accelerated()), "signature": key,
                "input_shape": in_shape, "output_shape": out_shape,
                "compile_ms": round((time.perf_counter() - t0) * 1e3, 3)}
    except Exception as exc:  # compile errors come back as RuntimeError
        _write_msg(proto, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _write_msg(proto, info)
    n_out = int(np.prod(out_shape))
    while True:
        line = requests.readline()
        if not line:
            return 0
        try:
            header = json.loads(line)
            shape = [int(d) for d in header["shape"]]
            x = np.frombuffer(_read_exact(requests, 4 * int(np.prod(shape))), dtype="<f4").reshape(shape)
            if shape != in_shape:
                raise ValueError(f"input shape {tuple(shape)} does not match the model's {tuple(in_shape)}")
            feed = np.array(x, dtype=np.float32, order="C")  # writable, owned copy
            for attempt in range(_LOCK_RETRIES + 1):
                try:
                    t0 = time.perf_counter()
                    inputs[0].write(feed)
                    cm.run_by_index(index, inputs, outputs)
                    y = np.asarray(outputs[0].read(n_out, np.float32), dtype="<f4").reshape(out_shape)
                    ms = (time.perf_counter() - t0) * 1e3
                    break
                except RuntimeError as exc:
                    # Mapping a GPU buffer for the host can time out on a heavily loaded machine
                    # ("Failed to lock custom tensor buffer"); it succeeds when tried again.
                    if "lock" not in str(exc).lower() or attempt == _LOCK_RETRIES:
                        raise
                    print(f"litert child: buffer lock failed (attempt {attempt + 1}), retrying", file=sys.stderr)
                    time.sleep(0.5 * (attempt + 1))
        except EOFError:
            return 0
        except Exception as exc:
            _write_msg(proto, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        _write_msg(proto, {"ok": True, "shape": out_shape, "ms": round(ms, 3)}, y.tobytes())


def _log_tail(path: Path, limit: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    keep = [ln for ln in lines if not ln.startswith(("INFO:", "I0000", "W0000")) and ln.strip()]
    return "\n".join(keep[-limit:])


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class CompiledModelProcess:
    """A ``.tflite`` compiled once by LiteRT's ``CompiledModel`` in a child Python process.

    Call it with a (1, 3, H, W) float32 array (or the model's own input shape)
    to get the model's float32 output. ``info`` has shapes, compile time and
    ``fully_accelerated`` as LiteRT reports it; ``partition`` what the log says
    about ops left to the CPU; ``last_ms`` the last run's time inside the child.
    Use as a context manager or call :meth:`close`. A crash in native code
    (SIGILL/SIGSEGV) ends the child and raises :class:`GpuRunError` with its log.
    """

    kind = "LiteRT CompiledModel"

    def __init__(self, path: str | Path, spec: dict[str, Any], env: dict[str, str], *, nhwc: bool = False,
                 timeout: float = 600.0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(self.path)
        self.spec = dict(spec)
        self.nhwc = nhwc
        self.timeout = timeout
        self.last_ms = float("nan")
        env = dict(env)
        repo_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in [repo_root, env.get("PYTHONPATH", "")] if p)
        self._log = Path(tempfile.mkstemp(prefix="litert_child_", suffix=".log")[1])
        cmd = [sys.executable, "-m", "converters.tflite.gpu_runtime", "--serve", str(self.path),
               "--spec", json.dumps(self.spec)]
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
        self._lock = threading.Lock()
        self.info = self._read_header(what="compiling")
        if not self.info.get("ok"):
            self.close()
            raise GpuRunError(f"{self.kind} could not compile {self.path.name}: {self.info.get('error')}\n"
                              f"{_log_tail(self._log)}")
        self.partition = partition_report(self._log.read_text(errors="replace"))
        self.fully_accelerated = bool(self.info.get("fully_accelerated")) and not self.partition["ops_on_cpu"]

    def _read_header(self, what: str) -> dict[str, Any]:
        line = self._readline_with_timeout()
        if not line:
            code = self._proc.wait(timeout=30)
            raise GpuRunError(f"the {self.kind} child died while {what} {self.path.name} "
                              f"({_describe_exit(code)}); its log:\n{_log_tail(self._log)}")
        return json.loads(line)

    def _readline_with_timeout(self) -> bytes:
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(self._proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.timeout)
        if reader.is_alive():
            self._proc.kill()
            reader.join(5)
            raise GpuRunError(f"the {self.kind} child timed out after {self.timeout:.0f} s on {self.path.name}")
        return result[0] if result else b""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.nhwc and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x, dtype="<f4")
        with self._lock:
            if self._proc.poll() is not None:
                raise GpuRunError(f"the {self.kind} child has exited ({_describe_exit(self._proc.returncode)})")
            try:
                _write_msg(self._proc.stdin, {"shape": list(x.shape)}, x.tobytes())
            except BrokenPipeError as exc:
                code = self._proc.wait(timeout=30)
                raise GpuRunError(f"the {self.kind} child died ({_describe_exit(code)}); its log:\n"
                                  f"{_log_tail(self._log)}") from exc
            header = self._read_header(what="running")
            if not header.get("ok"):
                raise GpuRunError(f"{self.kind} run failed on {self.path.name}: {header.get('error')}")
            shape = [int(d) for d in header["shape"]]
            data = _read_exact(self._proc.stdout, 4 * int(np.prod(shape)))
            self.last_ms = float(header.get("ms", "nan"))
        return np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdout:
            proc.stdout.close()
        log = getattr(self, "_log", None)
        if log is not None:
            log.unlink(missing_ok=True)

    def log_text(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> CompiledModelProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


_GPU_SUMMARY = re.compile(r"(\d+|No) operations? will run on the GPU, and (?:the remaining |all )?(\d+) "
                          r"operations? will run on the CPU")
_NPU_PARTITION = re.compile(r"Partitioned subgraph<(\d+)>, selected (\d+) ops, from a total of (\d+) ops")


def partition_report(log: str) -> dict[str, Any]:
    """What a LiteRT child's log says about delegation: GPU-rejected ops, ops left on the CPU,
    ops the NPU compiler plugin took (``npu_selected`` / ``npu_total``)."""
    rejected: list[str] = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Following operations are not supported by GPU delegate" in line:
            for follow in lines[i + 1:]:
                if _GPU_SUMMARY.search(follow) or not follow.strip() or follow.startswith(("INFO", "WARNING")):
                    break
                rejected.append(follow.strip())
    on_cpu = 0
    for m in _GPU_SUMMARY.finditer(log):
        on_cpu = max(on_cpu, int(m[2]))
    selected = total = 0
    for m in _NPU_PARTITION.finditer(log):
        selected += int(m[2])
        total += int(m[3])
    report: dict[str, Any] = {"gpu_rejected": rejected, "ops_on_cpu": on_cpu}
    if total:
        report.update(npu_selected=selected, npu_total=total)
        report["ops_on_cpu"] = max(on_cpu, total - selected)
    return report


class GpuRunner(CompiledModelProcess):
    """A ``.tflite`` compiled for the LiteRT GPU accelerator (WebGPU/Vulkan) in a child process."""

    kind = "LiteRT GPU"

    def __init__(self, path: str | Path, *, enforce_fp32: bool = False, cpu_fallback: bool = False,
                 nhwc: bool = False, lavapipe: str | Path | bool | None = True, timeout: float = 600.0) -> None:
        if lavapipe is False or lavapipe is None:
            env = dict(os.environ)  # whatever Vulkan driver the system has
        else:
            env = vulkan_env(lavapipe=None if lavapipe is True else lavapipe)
        self.enforce_fp32 = enforce_fp32
        spec = {"accel": "gpu", "enforce_fp32": enforce_fp32, "cpu_fallback": cpu_fallback}
        super().__init__(path, spec, env, nhwc=nhwc, timeout=timeout)


def load_runner(path: str | Path, *, enforce_fp32: bool = False, cpu_fallback: bool = False, nhwc: bool = False,
                lavapipe: str | Path | bool | None = True, timeout: float = 600.0) -> GpuRunner:
    """Compile ``path`` for the LiteRT GPU accelerator (fp16 unless ``enforce_fp32``) and return a runner.

    ``cpu_fallback``: also allow the CPU accelerator, so ops the GPU rejects
    run on the CPU (otherwise such a model fails to compile, which is the point
    of a GPU coverage check). ``lavapipe``: True uses ``<venv>/lavapipe`` (raises
    :class:`GpuUnavailableError` when it is not set up), a path uses that
    folder, False uses the system's Vulkan driver.
    """
    return GpuRunner(path, enforce_fp32=enforce_fp32, cpu_fallback=cpu_fallback, nhwc=nhwc, lavapipe=lavapipe,
                     timeout=timeout)


def run_tflite_gpu(path: str | Path, x: np.ndarray, **kwargs: Any) -> np.ndarray:
    """One GPU inference (compiles, runs, closes); keyword arguments as for :func:`load_runner`."""
    with load_runner(path, **kwargs) as run:
        return run(x)


def compare_with_cpu(path: str | Path, x: np.ndarray, *, enforce_fp32: bool = False,
                     **kwargs: Any) -> dict[str, Any]:
    """GPU vs the CPU interpreter (converters.tflite.run_tflite) on one input: errors and argmax agreement."""
    from converters.tflite import run_tflite

    cpu = run_tflite(path, x)
    with load_runner(path, enforce_fp32=enforce_fp32, **kwargs) as run:
        gpu = run(x)
        fully = run.fully_accelerated
    diff = np.abs(gpu - cpu)
    scale = float(np.abs(cpu).max()) or 1.0
    report = {"max_abs_error": float(diff.max()), "max_rel_error": float(diff.max()) / scale,
              "mean_abs_error": float(diff.mean()), "fully_accelerated": fully,
              "precision": "fp32" if enforce_fp32 else "fp16"}
    if cpu.ndim == 4 and cpu.shape[1] > 1:
        report["argmax_agreement"] = float((cpu.argmax(1) == gpu.argmax(1)).mean())
    return report


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="LiteRT GPU (lavapipe) runner")
    parser.add_argument("--serve", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--enforce-fp32", action="store_true")
    parser.add_argument("--cpu-fallback", action="store_true")
    parser.add_argument("--compare", metavar="MODEL", help="run MODEL on GPU and CPU, print the errors")
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve(args.serve, json.loads(args.spec))
    if args.compare:
        from converters.tflite import run_tflite  # noqa: F401 - fail early without the runtime

        with load_runner(args.compare, enforce_fp32=args.enforce_fp32, cpu_fallback=args.cpu_fallback) as run:
            shape = run.info["input_shape"]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        print(json.dumps(compare_with_cpu(args.compare, x, enforce_fp32=args.enforce_fp32,
                                          cpu_fallback=args.cpu_fallback), indent=2))
        return 0
    ok, why = lavapipe_status()
    print(why)
    return 0 if ok else 1


# --------------------------------------------------------------------------- registry


def _load_fp16(path: Path, artifact: dict) -> GpuRunner:
    return load_runner(path, nhwc=artifact.get("input_layout") == "NHWC")


def _load_fp32(path: Path, artifact: dict) -> GpuRunner:
    return load_runner(path, enforce_fp32=True, nhwc=artifact.get("input_layout") == "NHWC")


from converters.base import RuntimeSpec  # noqa: E402 - the registry reads this module last

_GPU_LABEL = ("LiteRT GPU accelerator (WebGPU over Vulkan) on Mesa lavapipe: the device's GPU kernels, "
              "a CPU Vulkan driver")
RUNTIMES = [
    RuntimeSpec("litert-gpu-fp16", "GPU", _GPU_LABEL + ", default fp16 precision", ("tflite",), ("gpu",),
                _load_fp16, lavapipe_status, compute_precision="fp16"),
    RuntimeSpec("litert-gpu-fp32", "GPU", _GPU_LABEL + ", fp32 enforced", ("tflite",), ("gpu",),
                _load_fp32, lavapipe_status),
]


if __name__ == "__main__":
    raise SystemExit(_main())
