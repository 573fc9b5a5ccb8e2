#!/usr/bin/env bash
# THE test command: `bash deploy/test.sh` (CI runs it through .ci/run).
#
#   1. installs the system packages the build and tests need, each only when missing
#      (libclang-dev for bindgen, etcd-server, pkg-config + libssl-dev, openssl, python3-venv if needed);
#   2. creates or reuses a Python virtualenv at .venv with the real Apache Pulsar client;
#   3. builds the workspace's binaries and tests (dev profile, --locked);
#   4. runs the Rust tests with cargo-nextest;
#   5. runs the Python tests in tests/python against a real `magnetar standalone` process,
#      after building tests/java/security (Pulsar's own Java token code and client, which
#      tests/python/test_java_security.py runs) with Maven when `mvn` and `java` are there.
#
# Everything is idempotent: on a machine that has it all, steps 1 and 2 cost a second.
# Exits non-zero if any step fails; the Rust and Python suites both run even if one fails,
# so one run reports every failure.
#
# Environment:
#   CARGO_TARGET_DIR      where cargo puts binaries (default: <repo>/target)
#   MAGNETAR_PYTEST_ARGS  extra arguments for pytest (e.g. "-k roundtrip -x")
#   NEXTEST_PROFILE       nextest profile (default: "ci" when CI=true and that profile exists)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=deploy/system-packages.sh
source "$REPO/deploy/system-packages.sh"

# Pinned so every run tests against the same client. 3.13.0 ships manylinux_2_28 wheels for
# CPython 3.11 on x86_64 (Debian 12's python and the pyenv default), so nothing is compiled.
PULSAR_CLIENT_VERSION=3.13.0
PYTEST_VERSION=9.2.0
# pulsar.schema.AvroSchema and JsonSchema need fastavro; ProtobufNativeSchema needs protobuf.
FASTAVRO_VERSION=1.13.1
PROTOBUF_VERSION=7.36.2
# The metrics tests parse /metrics with Prometheus' own Python parser.
PROMETHEUS_CLIENT_VERSION=0.26.0
# The web console test drives a real headless chromium through selenium.
SELENIUM_VERSION=4.50.0
VENV="$REPO/.venv"

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
if [[ $TARGET_DIR != /* ]]; then
    TARGET_DIR="$REPO/$TARGET_DIR" # cargo resolves a relative target dir against the cwd
fi
MAGNETAR_BIN="$TARGET_DIR/debug/magnetar"

# The Python suite gets this long before it is killed (with the broker processes it started:
# timeout(1) signals its whole process group). Its own waits are bounded well below it.
PYTHON_SUITE_TIMEOUT=1800

SCRIPT_START=$SECONDS
section() {
    printf '\n==== %s  [%ds] ====\n' "$*" "$((SECONDS - SCRIPT_START))"
}

# --------------------------------------------------------------------------------------------
section "1/5 system packages"
require_cargo

missing=()
have_libclang_dev || missing+=(libclang-dev)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
# The security tests make their CA, certificates and htpasswd lines with the openssl CLI.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The pulsar crate used by the Rust integration tests links openssl through openssl-sys.
if ! pkg-config --exists openssl 2>/dev/null && ! have_debian_package libssl-dev; then
    missing+=(libssl-dev)
fi
# The metrics tests run `promtool check metrics` (Debian's prometheus package ships it).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# The web console test runs headless chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [[ ${#missing[@]} -gt 0 ]]; then
    ensure_debian_packages "${missing[@]}"
fi
echo "libclang: ok; etcd: $(command -v etcd); openssl: $(pkg-config --modversion openssl 2>/dev/null || echo '?')"

# --------------------------------------------------------------------------------------------
section "2/5 python virtualenv ($VENV)"

# True when the venv has the pinned pulsar-client, pytest, fastavro and protobuf.
venv_ready() {
    [[ -x "$VENV/bin/python" ]] &&
        "$VENV/bin/python" - "$PULSAR_CLIENT_VERSION" "$PYTEST_VERSION" "$FASTAVRO_VERSION" "$PROTOBUF_VERSION" \
            "$PROMETHEUS_CLIENT_VERSION" "$SELENIUM_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import fastavro, google.protobuf, prometheus_client, pulsar, pytest, selenium  # noqa: F401  (importable)
pinned = (version("pulsar-client"), version("pytest"), version("fastavro"), version("protobuf"),
          version("prometheus-client"), version("selenium"))
sys.exit(0 if pinned == tuple(sys.argv[1:7]) else 1)
PY
}

# True when the venv's interpreter runs and has pip.
venv_usable() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

# Prefers the default python3 (pyenv's CPython on the dev machines); falls back to Debian's
# python3 with python3-venv when the default cannot create a venv (e.g. no ensurepip).
create_venv() {
    local python
    for python in python3 /usr/bin/python3; do
        if command -v "$python" >/dev/null 2>&1; then
            rm -rf "$VENV"
            if "$python" -m venv "$VENV" && venv_usable; then
                echo "created $VENV with $("$VENV/bin/python" --version)"
                return 0
            fi
        fi
    done
    echo "python3 -m venv failed; installing Debian's python3-venv"
    ensure_debian_packages python3-venv
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    venv_usable
}

if venv_ready; then
    echo "reusing $VENV: pulsar-client $PULSAR_CLIENT_VERSION, pytest $PYTEST_VERSION, fastavro $FASTAVRO_VERSION," \
        "protobuf $PROTOBUF_VERSION"
else
    venv_usable || create_venv
    # --only-binary: a source build of the C++ client would take long and need many headers;
    # if no wheel fits this interpreter we want to fail here, clearly.
    PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
        --only-binary pulsar-client \
        "pulsar-client==$PULSAR_CLIENT_VERSION" "pytest==$PYTEST_VERSION" "fastavro==$FASTAVRO_VERSION" \
        "protobuf==$PROTOBUF_VERSION" "prometheus-client==$PROMETHEUS_CLIENT_VERSION" \
        "selenium==$SELENIUM_VERSION"
    venv_ready || {
        echo "error: $VENV still lacks pulsar-client $PULSAR_CLIENT_VERSION / pytest $PYTEST_VERSION /" \
            "fastavro $FASTAVRO_VERSION / protobuf $PROTOBUF_VERSION" >&2
        exit 1
    }
    echo "installed pulsar-client $PULSAR_CLIENT_VERSION and pytest $PYTEST_VERSION into $VENV"
fi

# --------------------------------------------------------------------------------------------
section "3/5 cargo build (dev profile, --locked)"
cargo build --workspace --bins --tests --examples --locked
if [[ ! -x $MAGNETAR_BIN ]]; then
    echo "error: the build did not produce $MAGNETAR_BIN" >&2
    exit 1
fi

failed=()

# --------------------------------------------------------------------------------------------
section "4/5 rust tests"
if cargo nextest --version >/dev/null 2>&1; then
    if [[ -z ${NEXTEST_PROFILE:-} && ${CI:-} == true ]] &&
        grep -q '^\[profile\.ci\]' "$REPO/.config/nextest.toml" 2>/dev/null; then
        export NEXTEST_PROFILE=ci
    fi
    echo "nextest profile: ${NEXTEST_PROFILE:-default}"
    cargo nextest run --workspace --no-fail-fast --locked || failed+=("rust tests (cargo nextest)")
    # nextest does not run doc tests: the rustdoc examples are compiled (and run) here.
    cargo test --doc --workspace --locked || failed+=("rust doc tests")
else
    echo "cargo-nextest is not installed; falling back to cargo test"
    cargo test --workspace --no-fail-fast --locked || failed+=("rust tests (cargo test)")
fi

# --------------------------------------------------------------------------------------------
section "5/5 python tests (real pulsar-client $PULSAR_CLIENT_VERSION against $MAGNETAR_BIN)"
# The jar of Pulsar's Java code that test_java_security.py runs. The first build downloads
# Pulsar 4.2.4 and its dependencies from Maven Central into ~/.m2; later ones only compile.
# Without Maven or Java those tests skip and say so; a failed build fails them with its output.
if command -v mvn >/dev/null 2>&1 && command -v java >/dev/null 2>&1; then
    echo "building tests/java/security (mvn -q -B package)"
    (cd "$REPO/tests/java/security" && mvn -q -B package) || failed+=("java test tool (tests/java/security)")
else
    echo "mvn or java is not installed: the Java compatibility tests will skip"
fi
# shellcheck disable=SC2086 # MAGNETAR_PYTEST_ARGS is a list of words on purpose
if ! MAGNETAR_BIN="$MAGNETAR_BIN" PYTHONDONTWRITEBYTECODE=1 \
    timeout --kill-after=30s "$PYTHON_SUITE_TIMEOUT" \
    "$VENV/bin/python" -m pytest -p no:cacheprovider -v -ra "$REPO/tests/python" \
    ${MAGNETAR_PYTEST_ARGS:-} </dev/null; then
    failed+=("python tests (tests/python)")
fi

# --------------------------------------------------------------------------------------------
section "summary"
if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all tests passed"
