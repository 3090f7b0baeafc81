# Shared by scripts/make_default_*.sh (sourced, not run): resumable, timed recipe steps.
# Needs PYTHON and DRY_RUN set by the caller.

# the step of DIR's last checkpoint (0 when it has none)
saved_step() {
    local meta=$1/train_state/meta.json
    if [ -f "$meta" ]; then "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$meta"
    else echo 0; fi
}
# START=(--resume) when DIR holds a stopped run, else the given arguments (e.g. --init X)
start_args() { local dir=$1; shift; if [ -d "$dir/train_state" ]; then START=(--resume); else START=("$@"); fi; }
skip() { echo "== $1: done ($2)"; }
# timed NAME CMD...: print and run CMD (only print it under DRY_RUN=1), then its wall time
timed() {
    local name=$1 t0=$SECONDS dt; shift
    echo "== $name"
    echo "+ $*"
    [ "$DRY_RUN" = 1 ] && return 0
    "$@"
    dt=$((SECONDS - t0))
    printf '== %s took %d min %02d s\n' "$name" $((dt / 60)) $((dt % 60))
}
exported() { [ -f "$1/generator/config.json" ] && [ -f "$1/tokenizer/config.json" ]; }
