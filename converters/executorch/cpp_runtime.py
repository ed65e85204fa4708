"""ExecuTorch through its C++ runtime: build ``et_runner`` and drive it as a subprocess.

The C++ source in ``cpp_runner/`` is what an Android app calls through JNI; here
it is built against the headers and shared libraries inside the installed
``executorch`` wheel, so parity checks exercise the same C++ code path (Module,
BufferDataLoader, XNNPACK delegate, optimized kernels) that ships on device.

    from converters.executorch.cpp_runtime import build_runner, load_runner, verify_bundled
    binary = build_runner()                  # cached, rebuilt when a source changes
    run = load_runner("model.pte")           # (1,3,H,W) float32 -> (1,C,H,W) float32
    report = verify_bundled("model.bpte", atol=1e-4, rtol=1e-4)

The build lives outside git, in ``<venv>/build/et_runner`` (override with
``$ESPNET_MOBILE_ET_RUNNER_BUILD``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SOURCE_DIR = Path(__file__).resolve().parent / "cpp_runner"
BINARY_NAME = "et_runner"
BUILD_ENV = "ESPNET_MOBILE_ET_RUNNER_BUILD"
#: Exit codes of et_runner.
EXIT_OK, EXIT_VERIFY_FAILED, EXIT_ERROR = 0, 1, 2


class RunnerBuildError(RuntimeError):
    """et_runner cannot be built here; the message names the missing piece."""


class RunnerError(RuntimeError):
    """et_runner ran but failed (load, shape, execution)."""


# --------------------------------------------------------------------------- build


def executorch_root() -> Path:
    """The installed executorch package folder, checked for what a C++ build needs."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise RunnerBuildError("the executorch Python package is not installed (pip install executorch==1.5.1)")
    root = Path(next(iter(spec.submodule_search_locations)))
    needed = {
        "C++ headers": root / "include" / "executorch" / "extension" / "module" / "module.h",
        "c10 headers": root / "include" / "executorch" / "runtime" / "core" / "portable_type" / "c10",
        "CMake package config": root / "share" / "cmake" / "executorch-config.cmake",
        "prebuilt runtime library": root / "lib" / "libexecutorch.so",
        "CPU kernel library": root / "lib" / "libexecutorch_kernels_optimized.so",
        "XNNPACK delegate library": root / "lib" / "libexecutorch_backend_xnnpack.so",
    }
    for what, path in needed.items():
        if not path.exists():
            raise RunnerBuildError(
                f"the executorch wheel at {root} has no {what} ({path}); a C++ build needs a wheel "
                "that ships include/, lib/ and share/cmake (executorch>=1.5 on Linux x86_64/aarch64)"
            )
    return root


def default_build_dir() -> Path:
    env = os.environ.get(BUILD_ENV)
    return Path(env) if env else Path(sys.prefix) / "build" / BINARY_NAME


def _tool(names: list[str], what: str, hint: str) -> str:
    for name in names:
        if name and (found := shutil.which(name)):
            return found
    raise RunnerBuildError(f"no {what} found (looked for {', '.join(n for n in names if n)}); {hint}")


def _sources() -> list[Path]:
    files = sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in {".cpp", ".h", ".txt"})
    if not any(p.name == "CMakeLists.txt" for p in files):
        raise RunnerBuildError(f"{SOURCE_DIR}/CMakeLists.txt is missing")
    return files


def _fingerprint(root: Path, cmake: str, cxx: str) -> str:
    h = hashlib.sha256()
    for p in _sources():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    for lib in sorted((root / "lib").glob("*.so*")):
        st = lib.stat()
        h.update(f"{lib.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(f"{root}|{cmake}|{cxx}".encode())
    return h.hexdigest()[:32]


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def build_runner(build_dir: str | Path | None = None, *, force: bool = False, verbose: bool = False) -> Path:
    """Build (once, then only when a source or the executorch wheel changes) and return et_runner's path.

    Raises :class:`RunnerBuildError` naming the missing piece when cmake, a C++
    compiler or the wheel's headers/libraries are absent, or with the tail of
    the build log when compilation fails.
    """
    root = executorch_root()
    cmake = _tool(["cmake"], "cmake", "install it (apt-get install cmake, or pip install cmake)")
    cxx = _tool([os.environ.get("CXX", ""), "c++", "g++", "clang++"], "C++ compiler",
                "install one (apt-get install g++) or set $CXX")
    build_dir = Path(build_dir) if build_dir else default_build_dir()
    binary = build_dir / BINARY_NAME
    stamp = build_dir / ".fingerprint"
    want = _fingerprint(root, cmake, cxx)
    with _build_lock(build_dir):
        if not force and binary.exists() and stamp.exists() and stamp.read_text().strip() == want:
            return binary
        configure = [cmake, "-S", str(SOURCE_DIR), "-B", str(build_dir), f"-DEXECUTORCH_ROOT={root}",
                     f"-DCMAKE_CXX_COMPILER={cxx}", "-DCMAKE_BUILD_TYPE=Release"]
        cache = build_dir / "CMakeCache.txt"
        if not cache.exists() and shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        build = [cmake, "--build", str(build_dir), "--target", BINARY_NAME]
        if force:
            build.append("--clean-first")
        start = time.perf_counter()
        for step, cmd in (("configure", configure), ("build", build)):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if verbose or proc.returncode:
                log = (proc.stdout + proc.stderr).strip()
                if proc.returncode:
                    tail = "\n".join(log.splitlines()[-40:])
                    raise RunnerBuildError(f"et_runner {step} failed ({' '.join(cmd)}):\n{tail}")
                print(log)
        if not binary.exists():
            raise RunnerBuildError(f"the build finished but {binary} is missing")
        stamp.write_text(want + "\n")
        (build_dir / ".build_seconds").write_text(f"{time.perf_counter() - start:.2f}\n")
    return binary


# --------------------------------------------------------------------------- running


@dataclass
class RunResult:
    output: np.ndarray
    shape: tuple[int, ...]
    latency_ms: float
    load_ms: float
    stdout: str


@dataclass
class CaseResult:
    index: int
    passed: bool
    max_abs_error: float
    detail: str = ""


@dataclass
class BundledVerification:
    passed: bool
    cases: list[CaseResult] = field(default_factory=list)
    stdout: str = ""
    returncode: int = 0


_DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
           "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "float16": np.float16}


def _fields(stdout: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+", key):
            out[key] = value.strip()
    return out


def _invoke(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise RunnerError(f"et_runner timed out after {timeout:.0f} s: {' '.join(args)}") from exc


def run_file(model: str | Path, x: np.ndarray, *, binary: str | Path | None = None, warmup: int = 0,
             repeat: int = 1, timeout: float = 600.0) -> RunResult:
    """Run ``model`` (.pte or .bpte) on one input through et_runner; output, shape and latency."""
    binary = Path(binary) if binary else build_runner()
    x = np.ascontiguousarray(x, dtype="<f4")
    with tempfile.TemporaryDirectory(prefix="et_runner_") as tmp:
        src, dst = Path(tmp) / "input.f32", Path(tmp) / "output.bin"
        x.tofile(src)
        args = [str(binary), str(model), str(src), str(dst), "--shape", ",".join(str(int(d)) for d in x.shape),
                "--warmup", str(warmup), "--repeat", str(repeat)]
        proc = _invoke(args, timeout)
        if proc.returncode != EXIT_OK:
            raise RunnerError(f"et_runner failed on {model} (exit {proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        info = _fields(proc.stdout)
        shape = tuple(int(d) for d in info["output_shape"].split(",") if d)
        dtype = _DTYPES.get(info.get("output_dtype", "float32"))
        if dtype is None:
            raise RunnerError(f"et_runner wrote an output of unsupported dtype {info.get('output_dtype')}")
        y = np.fromfile(dst, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return RunResult(output=y, shape=shape, latency_ms=float(info.get("latency_ms", "nan")),
                     load_ms=float(info.get("load_ms", "nan")), stdout=proc.stdout)


def load_runner(path: str | Path, *, binary: str | Path | None = None, timeout: float = 600.0):
    """A runner (see :class:`converters.base.RuntimeSpec`) that executes ``path`` with the C++ runtime.

    The binary is built (or found up to date) now; each call starts one
    et_runner process, so a call also pays program loading (milliseconds for
    these models). Returns float32 output for float32 input.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    exe = Path(binary) if binary else build_runner()

    def run_cpp(x: np.ndarray) -> np.ndarray:
        y = run_file(path, x, binary=exe, timeout=timeout).output
        return y.astype(np.float32, copy=False)

    run_cpp.binary = exe  # type: ignore[attr-defined]
    return run_cpp


_CASE = re.compile(r"^bundled_case (\d+): (PASS|FAIL) max_abs_err=(\S+) worst_excess=\S+ ?(.*)$")


def verify_bundled(path: str | Path, *, atol: float = 1e-4, rtol: float = 1e-4, method: str = "forward",
                   binary: str | Path | None = None, timeout: float = 600.0) -> BundledVerification:
    """Run every bundled test case of a ``.bpte`` with the C++ runtime and compare with its
    expected outputs (``|out - exp| <= atol + rtol*|exp|``). Raises :class:`RunnerError` when
    the program cannot be run at all; a tolerance failure is ``passed=False``."""
    exe = Path(binary) if binary else build_runner()
    args = [str(exe), str(path), "--verify-bundled", "--atol", repr(float(atol)), "--rtol", repr(float(rtol)),
            "--method", method]
    proc = _invoke(args, timeout)
    if proc.returncode not in (EXIT_OK, EXIT_VERIFY_FAILED):
        raise RunnerError(f"et_runner could not verify {path} (exit {proc.returncode}): "
                          f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    cases = []
    for line in proc.stdout.splitlines():
        if m := _CASE.match(line.strip()):
            cases.append(CaseResult(int(m[1]), m[2] == "PASS", float(m[3]), m[4]))
    passed = proc.returncode == EXIT_OK and bool(cases) and all(c.passed for c in cases)
    return BundledVerification(passed=passed, cases=cases, stdout=proc.stdout, returncode=proc.returncode)


def main(argv: list[str] | None = None) -> int:
    """``python -m converters.executorch.cpp_runtime`` builds et_runner and prints its path."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="rebuild from scratch")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        path = build_runner(args.build_dir, force=args.force, verbose=args.verbose)
    except RunnerBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}  ({time.perf_counter() - start:.1f} s)")
    return 0


# --------------------------------------------------------------------------- registry


def _status() -> tuple[bool, str]:
    try:
        build_runner()
    except RunnerBuildError as err:
        return False, str(err)
    return True, ""


def _load(path: Path, _artifact: dict):
    return load_runner(path)


from converters.base import RuntimeSpec  # noqa: E402 - the registry reads this module last

RUNTIMES = [RuntimeSpec("executorch-cpp", "CPU",
                        "ExecuTorch C++ runtime (et_runner, the code an Android app calls through JNI), XNNPACK",
                        ("executorch",), ("xnnpack",), _load, _status)]


if __name__ == "__main__":
    raise SystemExit(main())
