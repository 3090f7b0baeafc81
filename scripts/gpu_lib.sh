# Sourced from the repository root by scripts/gpu_check.sh and scripts/gpu_t2i.sh: what a bare
# GPU machine lacks, installed from what travels with the working tree, and the helpers both use.

# gpu_site DIR [TAR]: the wheels in .whl/ (scripts/gpu_wheels.sh), else the site folder TAR
# (.tar.xz) unpacked, installed into DIR once per machine; DIR and this checkout go first on
# PYTHONPATH. Neither there: nothing is installed (the machine has what it needs).
gpu_site() {
  local site=$1 tarball=${2:-}
  if [ ! -e "$site/.installed" ]; then
    mkdir -p "$site"
    if [ -d .whl ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || { rm -rf "$site"; return 1; }
      touch "$site/.installed"
    elif [ -f "$tarball" ]; then
      tar xJf "$tarball" -C "$site" || { rm -rf "$site"; return 1; }
      touch "$site/.installed"
    fi
  fi
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
}

# the hart CLI from this checkout (not installed there)
hart() { python -c 'import sys; from hart.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
# a heading with the time, between the parts of a log
step() { echo; echo "=== $* ($(date +%T))"; }
