#!/usr/bin/env bash
# Create or update the project environment in .venv/ (idempotent).
# torch is installed first and pinned: a looser pin can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python

# Kotlin compiler, JUnit 4 and org.json (Debian's libandroid-json-java: the org.json Android ships, which
# the core reads manifests with) for the Android app's pure Kotlin core and its compile check
# (android_demo/core/run_tests.sh, tests/test_android_core.py, tests/test_android_app_compiles.py).
# Not fatal: without them those tests skip (and fail under CI=true).
KOTLIN_VERSION=2.4.20
KOTLIN_TGZ_SHA256=c23dab400d7ce5ea8b6c909947c0ca5454189e4bb1108695b5f464500e5e950f
install_kotlinc() {
  local dest="${KOTLINC_HOME:-.venv/tools/kotlinc}" tmp
  if [ -x "$dest/bin/kotlinc" ] && [ "$(cat "$dest/.version" 2>/dev/null)" = "$KOTLIN_VERSION" ]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || { echo "bootstrap: npm not found, kotlinc not installed"; return 1; }
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "kotlin-compiler@$KOTLIN_VERSION" >/dev/null) || { rm -rf "$tmp"; return 1; }
  if [ "$(sha256sum "$tmp/kotlin-compiler-$KOTLIN_VERSION.tgz" | cut -d' ' -f1)" != "$KOTLIN_TGZ_SHA256" ]; then
    echo "bootstrap: kotlin-compiler-$KOTLIN_VERSION.tgz has an unexpected sha256"; rm -rf "$tmp"; return 1
  fi
  tar -xzf "$tmp/kotlin-compiler-$KOTLIN_VERSION.tgz" -C "$tmp" && mkdir -p "$(dirname "$dest")" \
    && rm -rf "$dest" && mv "$tmp/package" "$dest" && echo "$KOTLIN_VERSION" > "$dest/.version" \
    || { rm -rf "$tmp"; return 1; }
  rm -rf "$tmp"
  echo "bootstrap: kotlinc $KOTLIN_VERSION in $dest"
}
install_junit() {
  [ -f /usr/share/java/junit4.jar ] && { [ -f /usr/share/java/hamcrest-core.jar ] || [ -f /usr/share/java/hamcrest.jar ]; } \
    && [ -f /usr/share/java/com.android.json.jar ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends junit4 libhamcrest-java libandroid-json-java >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends junit4 libhamcrest-java libandroid-json-java >/dev/null; }
  else
    echo "bootstrap: JUnit 4 or org.json missing; install the Debian packages junit4, libhamcrest-java and libandroid-json-java"; return 1
  fi
}
# Headless Chromium (and a font) to render the parity report for its screenshot test
# (tests/test_parity.py). Not fatal: without it that test skips (and fails under CI=true).
install_chromium() {
  command -v chromium >/dev/null 2>&1 && [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; }
  else
    echo "bootstrap: Chromium missing; install the Debian packages chromium and fonts-dejavu-core"; return 1
  fi
}
install_kotlinc || echo "bootstrap: warning: no kotlinc; the Kotlin core tests will skip"
install_junit || echo "bootstrap: warning: no JUnit 4 or org.json; the Kotlin core tests will skip"
install_chromium || echo "bootstrap: warning: no Chromium; the parity report screenshot test will skip"
stamp=.venv/.espnet_mobile_bootstrap
want="$(sha256sum pyproject.toml .ci/bootstrap.sh | sha256sum | cut -c1-16)"
# Runtime extras outside pip, each idempotent and a no-op when already done:
# Mesa 25's lavapipe (Vulkan on the CPU) for the LiteRT GPU tests, unpacked into
# .venv/lavapipe from Debian bookworm-backports without a system install.
extras() {
  if command -v apt-get >/dev/null; then
    bash converters/tflite/setup_lavapipe.sh .venv/lavapipe \
      || echo "bootstrap: WARNING lavapipe setup failed; the LiteRT GPU tests will report why"
  fi
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import espnet_mobile, torch" 2>/dev/null; then
  extras
  echo "bootstrap: .venv is up to date"
  exit 0
fi
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet torch==2.13.0
"$VPY" -m pip install --quiet -e ".[all,dev]"
extras
echo "$want" > "$stamp"
echo "bootstrap: .venv ready ($("$VPY" -c 'import torch; print("torch", torch.__version__)'))"
