#!/usr/bin/env bash
# Compile the pure Kotlin core and its JVM tests with kotlinc, then run them with JUnit 4.
# No Gradle and no Android SDK needed:
#
#   ESPNET_MOBILE_BUNDLE=/path/to/<model_id> android_demo/core/run_tests.sh
#
# Without ESPNET_MOBILE_BUNDLE the golden-vector tests are skipped (reported as SKIP).
# Tools, first found wins:
#   kotlinc   $KOTLINC, <repo>/.venv/tools/kotlinc/bin/kotlinc (installed by .ci/bootstrap.sh), PATH
#   JUnit 4   $JUNIT_JAR, /usr/share/java/junit4.jar (Debian package junit4)
#   hamcrest  $HAMCREST_JAR, /usr/share/java/hamcrest-core.jar or hamcrest.jar (Debian libhamcrest-java)
#   org.json  $ANDROID_JSON_JAR, /usr/share/java/com.android.json.jar (Debian libandroid-json-java: the
#             org.json that Android ships, which the core reads manifests with; on Android it is the platform's)
# The compiled jar is cached in $ESPNET_MOBILE_KOTLIN_BUILD (default android_demo/core/build/kotlinc)
# and reused while the sources and the compiler are unchanged.
# Exit codes: 0 all passed, 1 a test failed, 2 compilation failed, 3 a tool is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

missing() {
  echo "run_tests.sh: MISSING TOOL: $1" >&2
  exit 3
}

kotlinc="${KOTLINC:-}"
if [ -z "$kotlinc" ]; then
  if [ -x "$repo/.venv/tools/kotlinc/bin/kotlinc" ]; then
    kotlinc="$repo/.venv/tools/kotlinc/bin/kotlinc"
  elif command -v kotlinc >/dev/null 2>&1; then
    kotlinc="$(command -v kotlinc)"
  else
    missing "kotlinc (run bash .ci/bootstrap.sh, or set KOTLINC)"
  fi
fi
[ -x "$kotlinc" ] || missing "kotlinc at $kotlinc is not executable"
klib="$(cd "$(dirname "$(readlink -f "$kotlinc")")/../lib" && pwd)"
for jar in kotlin-stdlib.jar kotlin-test.jar kotlin-test-junit.jar; do
  [ -f "$klib/$jar" ] || missing "$klib/$jar (the kotlinc distribution is incomplete)"
done

pick() { for f in "$@"; do if [ -n "$f" ] && [ -f "$f" ]; then echo "$f"; return 0; fi; done; return 1; }
junit="$(pick "${JUNIT_JAR:-}" /usr/share/java/junit4.jar)" \
  || missing "JUnit 4 jar (apt-get install junit4, or set JUNIT_JAR)"
hamcrest="$(pick "${HAMCREST_JAR:-}" /usr/share/java/hamcrest-core.jar /usr/share/java/hamcrest.jar)" \
  || missing "hamcrest jar (apt-get install libhamcrest-java, or set HAMCREST_JAR)"
json="$(pick "${ANDROID_JSON_JAR:-}" /usr/share/java/com.android.json.jar /usr/share/java/json.jar)" \
  || missing "org.json jar (apt-get install libandroid-json-java, or set ANDROID_JSON_JAR)"
command -v java >/dev/null 2>&1 || missing "java (a JDK 17 or newer)"

main_src="$here/src/main/kotlin"
test_src="$here/src/test/kotlin"

# The core must stay free of platform APIs; the tests may use javax.imageio.
if grep -rnE '^import (android|androidx|javax\.imageio|java\.awt)\.' "$main_src"; then
  echo "run_tests.sh: the core (src/main) imports a platform API (above); keep it in the apps or the tests" >&2
  exit 2
fi

build="${ESPNET_MOBILE_KOTLIN_BUILD:-$here/build/kotlinc}"
mkdir -p "$build"
jar="$build/core-and-tests.jar"
stamp="$build/core-and-tests.sha256"
want="$( { "$kotlinc" -version 2>&1 | head -n1; echo "$junit $json"; \
           find "$main_src" "$test_src" -name '*.kt' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-32)"

if [ -f "$jar" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "run_tests.sh: sources unchanged, reusing $jar"
else
  echo "run_tests.sh: compiling core + tests with $("$kotlinc" -version 2>&1 | head -n1)"
  tmp="$(mktemp "$build/.core-and-tests.XXXXXX.jar")"
  t0=$(date +%s)
  if ! "$kotlinc" -jvm-target 17 -no-reflect \
      -cp "$json:$junit:$hamcrest:$klib/kotlin-test.jar:$klib/kotlin-test-junit.jar" \
      -d "$tmp" "$main_src" "$test_src"; then
    rm -f "$tmp"
    echo "run_tests.sh: compilation failed" >&2
    exit 2
  fi
  mv -f "$tmp" "$jar"
  echo "$want" > "$stamp"
  echo "run_tests.sh: compiled in $(( $(date +%s) - t0 )) s"
fi

# Every class named *Test declared in a *Test.kt file.
classes=()
while IFS= read -r file; do
  pkg="$(sed -n 's/^package \([A-Za-z0-9_.]*\).*/\1/p' "$file" | head -n1)"
  while IFS= read -r cls; do
    classes+=("${pkg:+$pkg.}$cls")
  done < <(sed -n 's/^class \([A-Za-z0-9_]*Test\)\b.*/\1/p' "$file")
done < <(find "$test_src" -name '*Test.kt' | sort)
[ "${#classes[@]}" -gt 0 ] || { echo "run_tests.sh: no test classes found under $test_src" >&2; exit 2; }

echo "run_tests.sh: bundle ${ESPNET_MOBILE_BUNDLE:-<unset: golden-vector tests will be skipped>}"
exec java -cp "$jar:$json:$klib/kotlin-stdlib.jar:$klib/kotlin-test.jar:$klib/kotlin-test-junit.jar:$junit:$hamcrest" \
  org.espnetmobile.core.CoreTestMain "${classes[@]}"
