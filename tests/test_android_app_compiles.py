"""The Android app's runtime and bundle code compiles against the real libraries' API shapes.

Gradle and the Android SDK are not on this machine, so the app is compiled with kotlinc against
API stubs written from the published sources of the versions the app pins (executorch-android
1.5.1, LiteRT 2.3.0) plus the few Android platform classes those files use; each stub's header
names the repository and commit it was written from (for the Android platform: the API
reference). The stubs keep the Kotlin/Java kinds (property or method, nullability, vararg,
default arguments), so a call by a wrong name or type,
such as ``tensor.getDataAsFloatArray()`` on ExecuTorch's Kotlin ``Tensor`` whose accessor is the
property ``dataAsFloatArray``, fails here as it would fail in Gradle.

Compiled: every Kotlin file of ``android_demo/app/src/main`` except the Compose UI/CameraX files
(the view model too, against stubs of Compose's state holder, AndroidX Lifecycle and
kotlinx.coroutines), plus the instrumented test (against AndroidX Test stubs); the UI files are
checked not to touch ExecuTorch, LiteRT or the bundle's files themselves.
Two kotlinc runs (stubs + core, then the app files); each result is cached under
``android_demo/app/build/compile-check`` by the hash of its inputs, so an unchanged tree costs
nothing. Needs kotlinc (``bash .ci/bootstrap.sh``), a JDK and Debian's libandroid-json-java (the
core reads the manifest with org.json, which Android ships); without them the tests skip with the
reason, and fail under CI=true.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUBS = REPO / "tests" / "android_stubs"
APP_SRC = REPO / "android_demo" / "app" / "src" / "main" / "kotlin"
APP_TEST_SRC = REPO / "android_demo" / "app" / "src" / "androidTest" / "kotlin"
CORE_SRC = REPO / "android_demo" / "core" / "src" / "main" / "kotlin"
BUILD = Path(os.environ.get("ESPNET_MOBILE_APP_CHECK_BUILD", REPO / "android_demo" / "app" / "build" / "compile-check"))
IN_CI = os.environ.get("CI", "").lower() == "true"
JSON_JARS = ("/usr/share/java/com.android.json.jar", "/usr/share/java/json.jar")
JUNIT_JARS = ("/usr/share/java/junit4.jar",)
HAMCREST_JARS = ("/usr/share/java/hamcrest-core.jar", "/usr/share/java/hamcrest.jar")

# Files that are Compose UI or CameraX: not compiled here (no stubs of those libraries). They may
# use the app's own classes, never ExecuTorch, LiteRT or the bundle's files directly.
UI_IMPORTS = re.compile(
    r"^import androidx\.(compose\.(ui|foundation|material3)|camera|activity|lifecycle\.viewmodel\.compose)\.", re.M)
RUNTIME_USE = re.compile(
    r"^import (org\.pytorch\.executorch|com\.google\.ai\.edge\.litert)\.|"
    r"\b(Bundle\.open|AssetBundleFiles|readVerified|materializeArtifact|verifiedAssetPath|goldenInput|goldenLogits)\b",
    re.M,
)


def _tools() -> tuple[dict[str, str], list[str]]:
    found: dict[str, str] = {}
    missing: list[str] = []
    candidates = [os.environ.get("KOTLINC"), str(REPO / ".venv/tools/kotlinc/bin/kotlinc"), shutil.which("kotlinc")]
    kotlinc = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if kotlinc:
        found["kotlinc"] = kotlinc
    else:
        missing.append("kotlinc (bash .ci/bootstrap.sh installs it into .venv/tools/kotlinc, or set KOTLINC)")
    for tool in ("javac", "java"):
        if shutil.which(tool):
            found[tool] = shutil.which(tool)  # type: ignore[assignment]
        else:
            missing.append(f"{tool} (a JDK 17 or newer)")
    jars = (("json", "ANDROID_JSON_JAR", JSON_JARS, "org.json for the JVM (apt-get install libandroid-json-java)"),
            ("junit", "JUNIT_JAR", JUNIT_JARS, "JUnit 4, for the instrumented test (apt-get install junit4)"),
            ("hamcrest", "HAMCREST_JAR", HAMCREST_JARS, "hamcrest (apt-get install libhamcrest-java)"))
    for name, env, paths, why in jars:
        jar = os.environ.get(env) or next((j for j in paths if Path(j).is_file()), None)
        if jar:
            found[name] = jar
        else:
            missing.append(why)
    return found, missing


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    found, missing = _tools()
    if missing:
        message = "the Android compile check needs " + ", ".join(missing)
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return found


def _digest(paths: list[Path], *extra: str) -> str:
    h = hashlib.sha256()
    for item in extra:
        h.update(item.encode() + b"\0")
    for p in sorted(paths):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def _kotlinc(
    tools: dict[str, str], out: Path, classpath: list[str], sources: list[Path],
) -> subprocess.CompletedProcess[str]:
    cmd = [tools["kotlinc"], "-jvm-target", "17", "-no-reflect", "-nowarn", "-cp", os.pathsep.join(classpath),
           "-d", str(out), *map(str, sources)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def _errors(proc: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line)


@pytest.fixture(scope="module")
def deps(tools: dict[str, str]) -> list[str]:
    """The classpath the app compiles against: Android and AndroidX Test stubs, LiteRT and ExecuTorch stubs,
    the core, org.json, JUnit."""
    java_stubs = sorted(p for d in ("android", "androidx") for p in (STUBS / d).rglob("*.java"))
    kotlin_stubs = sorted(p for d in ("executorch", "litert", "androidx", "kotlinx") for p in (STUBS / d).rglob("*.kt"))
    core = sorted(CORE_SRC.rglob("*.kt"))
    version = subprocess.run([tools["kotlinc"], "-version"], capture_output=True, text=True).stderr.strip()
    key = _digest(java_stubs + kotlin_stubs + core, version, tools["json"], tools["junit"], tools["hamcrest"])
    android_classes = BUILD / f"android-{key}"
    deps_jar = BUILD / f"deps-{key}.jar"
    if not deps_jar.is_file():
        BUILD.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(android_classes, ignore_errors=True)
        javac = [tools["javac"], "-nowarn", "--release", "17", "-d", str(android_classes), "-cp", tools["junit"]]
        proc = subprocess.run([*javac, *map(str, java_stubs)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"the Android stubs do not compile:\n{proc.stdout}{proc.stderr}"
        tmp = BUILD / f".deps-{key}.tmp.jar"
        proc = _kotlinc(tools, tmp, [str(android_classes), tools["json"]], kotlin_stubs + core)
        assert proc.returncode == 0, f"the stubs or the core do not compile:\n{_errors(proc) or proc.stderr[-4000:]}"
        tmp.replace(deps_jar)
    return [str(deps_jar), str(android_classes), tools["json"], tools["junit"], tools["hamcrest"]]


def _app_files() -> tuple[list[Path], list[Path]]:
    """(files compiled here, Compose/CameraX UI files): the app's sources and its instrumented test."""
    compiled, ui = [], []
    for path in sorted([*APP_SRC.rglob("*.kt"), *APP_TEST_SRC.rglob("*.kt")]):
        (ui if UI_IMPORTS.search(path.read_text()) else compiled).append(path)
    return compiled, ui


def compile_app(tools: dict[str, str], deps: list[str]) -> tuple[bool, str]:
    """Compile the app's non-UI files against the stubs; (ok, kotlinc's error lines). Cached when ok."""
    compiled, _ = _app_files()
    key = _digest(compiled, *deps)
    ok_stamp = BUILD / f"app-{key}.ok"
    if ok_stamp.is_file():
        return True, ""
    out = BUILD / f".app-{key}"
    shutil.rmtree(out, ignore_errors=True)
    proc = _kotlinc(tools, out, deps, compiled)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        return False, _errors(proc) or (proc.stdout + proc.stderr)[-4000:]
    ok_stamp.write_text("kotlinc ok\n")
    return True, ""


def test_ui_files_leave_runtimes_and_bundle_files_to_the_compiled_ones() -> None:
    compiled, ui = _app_files()
    names = {p.name for p in compiled}
    expected = {"Runtimes.kt", "AssetBundle.kt", "Session.kt", "DemoViewModel.kt", "AccuracyCheckInstrumentedTest.kt"}
    assert expected <= names, f"compiled set: {sorted(names)}"
    offenders = {p.name: sorted({m.group(0) for m in RUNTIME_USE.finditer(p.read_text())}) for p in ui}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, (
        "these Compose/CameraX files use ExecuTorch, LiteRT or the bundle files directly, so the compile "
        f"check cannot see them; move that code into a non-UI file: {offenders}")


@pytest.mark.slow
def test_app_compiles_against_executorch_litert_and_android_stubs(tools: dict[str, str], deps: list[str]) -> None:
    ok, errors = compile_app(tools, deps)
    assert ok, "kotlinc rejects the app's runtime code against the libraries' API shapes:\n" + errors


@pytest.mark.slow
def test_stubs_reject_a_java_getter_on_a_kotlin_property(
    tools: dict[str, str], deps: list[str], tmp_path: Path,
) -> None:
    """The stubs keep Kotlin kinds: the call the app once made must not compile, the right one must."""
    wrong = tmp_path / "Wrong.kt"
    wrong.write_text(
        "package wrong\nimport org.pytorch.executorch.Tensor\n"
        "fun logits(t: Tensor): FloatArray = t.getDataAsFloatArray()\n"
        "fun mask(t: Tensor): IntArray = t.getDataAsIntArray()\n"
        "fun accelerators(e: com.google.ai.edge.litert.Environment) = e.availableAccelerators\n")
    right = tmp_path / "Right.kt"
    right.write_text(
        "package right\nimport org.pytorch.executorch.Tensor\n"
        "fun logits(t: Tensor): FloatArray = t.dataAsFloatArray\n"
        "fun mask(t: Tensor): IntArray = t.dataAsIntArray\n"
        "fun accelerators(e: com.google.ai.edge.litert.Environment) = e.getAvailableAccelerators()\n")
    proc = _kotlinc(tools, tmp_path / "out", deps, [wrong, right])
    errors = _errors(proc)
    assert proc.returncode != 0
    assert "Wrong.kt" in errors and "Right.kt" not in errors, errors
    assert "unresolved reference 'getDataAsFloatArray'" in errors.replace("`", "'"), errors
    assert "unresolved reference 'getDataAsIntArray'" in errors.replace("`", "'"), errors
    # getAvailableAccelerators() is a Kotlin function, not a property: no synthetic accessor.
    assert "unresolved reference 'availableAccelerators'" in errors.replace("`", "'"), errors
