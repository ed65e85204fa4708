#!/usr/bin/env bash
# Unpack Mesa 25's Vulkan CPU driver (lavapipe) into a project-local folder.
#
#   bash converters/tflite/setup_lavapipe.sh [DEST]     (default: .venv/lavapipe)
#
# Nothing is installed system-wide: the .debs come from Debian bookworm-backports
# through a private apt configuration (own sources list, package lists and cache
# under DEST/apt), and are unpacked with `dpkg -x` into DEST/root. Only packages
# that the running system lacks, or has in a version too old for Mesa 25 (e.g.
# libdrm), are fetched; everything else (LLVM 15, libxcb, ...) is the system's.
#
# Result: DEST/icd.json (for VK_ICD_FILENAMES) and DEST/lib (for
# LD_LIBRARY_PATH), which converters.tflite.gpu_runtime uses. Re-running is a
# no-op once DEST/.ready matches this script's version; pass FORCE=1 to redo.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dest="${1:-${LAVAPIPE_DIR:-$repo/.venv/lavapipe}}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
stamp="$dest/.ready"
want="lavapipe-v1 $(sha256sum "$0" | cut -c1-16)"

if [ "${FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dest/icd.json" ]; then
  echo "setup_lavapipe: $dest is up to date"
  exit 0
fi

for tool in apt-get apt-cache dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "setup_lavapipe: needs $tool (a Debian/Ubuntu system)" >&2; exit 2; }
done
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
if [ "$codename" != bookworm ]; then
  echo "setup_lavapipe: written for Debian bookworm (found '${codename:-unknown}'); set up a Vulkan ICD by hand" >&2
  exit 2
fi

aptdir="$dest/apt"
mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/debs"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
cat > "$aptdir/sources.list" <<EOF
deb [signed-by=$keyring] $mirror bookworm main
deb [signed-by=$keyring] $mirror bookworm-updates main
deb [signed-by=$keyring] $security bookworm-security main
deb [signed-by=$keyring] $mirror bookworm-backports main
EOF
# Private lists and cache; the system's dpkg status is read (not written) so
# that only what is missing or too old gets fetched.
apt_opts=(
  -o "Dir::Etc::sourcelist=$aptdir/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$aptdir/lists"
  -o "Dir::Cache=$aptdir/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Get::List-Cleanup=0"
  -o "APT::Sandbox::User=root"
)

echo "setup_lavapipe: updating private package lists in $aptdir"
apt-get "${apt_opts[@]}" -qq update

# What `apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1`
# would unpack on this system, minus the OpenGL side of Mesa that the
# versioned Breaks drag along (not needed for Vulkan).
mapfile -t pkgs < <(
  apt-get "${apt_opts[@]}" -s -t bookworm-backports --no-install-recommends \
    install mesa-vulkan-drivers libvulkan1 2>/dev/null \
  | awk '/^Inst /{print $2}' \
  | grep -Ev '^(libegl|libgbm|libgl|libglx|libglapi|mesa-libgallium|libdrm-(intel|nouveau|radeon|common)|mesa-va|mesa-vdpau|libosmesa)' || true
)
if [ "${#pkgs[@]}" -eq 0 ]; then
  # Everything already installed system-wide at a new enough version.
  pkgs=(mesa-vulkan-drivers)
fi
# Pin the Mesa package itself to backports explicitly.
spec=()
for p in "${pkgs[@]}"; do
  case "$p" in
    mesa-vulkan-drivers) spec+=("mesa-vulkan-drivers/bookworm-backports") ;;
    *) spec+=("$p") ;;
  esac
done
echo "setup_lavapipe: downloading ${spec[*]}"
rm -f "$aptdir/debs/"*.deb
(cd "$aptdir/debs" && apt-get "${apt_opts[@]}" -qq -t bookworm-backports download "${spec[@]}")

root="$dest/root"
rm -rf "$root.tmp"
mkdir -p "$root.tmp"
for deb in "$aptdir/debs/"*.deb; do
  dpkg-deb -x "$deb" "$root.tmp"
done
rm -rf "$root"
mv "$root.tmp" "$root"

multiarch="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
libdir="$root/usr/lib/$multiarch"
lvp="$libdir/libvulkan_lvp.so"
[ -f "$lvp" ] || { echo "setup_lavapipe: $lvp missing after unpacking" >&2; exit 1; }
ln -sfn "$libdir" "$dest/lib"

# An ICD manifest pointing at the unpacked driver by absolute path (the one
# shipped in the package names the system path /usr/lib/...).
api="$(sed -n 's/.*"api_version"[^"]*"\([^"]*\)".*/\1/p' "$root"/usr/share/vulkan/icd.d/lvp_icd*.json | head -n1)"
cat > "$dest/icd.json" <<EOF
{
    "file_format_version": "1.0.1",
    "ICD": {
        "library_path": "$lvp",
        "api_version": "${api:-1.3.0}"
    }
}
EOF

missing="$(LD_LIBRARY_PATH="$libdir" ldd "$lvp" | awk '/not found/{print $1}' | tr '\n' ' ')"
if [ -n "$missing" ]; then
  echo "setup_lavapipe: lavapipe cannot load, missing: $missing" >&2
  exit 1
fi
version="$(ls "$aptdir/debs" | sed -n 's/^mesa-vulkan-drivers_\([^_]*\)_.*/\1/p' | sed 's/%3a/:/')"
echo "$want" > "$stamp"
echo "setup_lavapipe: lavapipe ${version:-?} ready: VK_ICD_FILENAMES=$dest/icd.json LD_LIBRARY_PATH=$dest/lib"
