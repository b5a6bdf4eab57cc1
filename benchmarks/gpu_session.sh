#!/usr/bin/env bash
# Everything a GPU session has to measure for the GPU study (docs/gpu.md, "The GPU study"), in stages, each writing
# its output into OUT as it goes, so that a session cut short keeps what it measured.
#
#   bash benchmarks/gpu_session.sh pack                 # here, before: the data and wheels the GPU machine lacks
#   bash benchmarks/gpu_session.sh OUT STAGE [STAGE...] # there; stages, about 20 minutes in all on an H200:
#     study   the GPU study, capitu study --preset small --source ../shared/corpus --jobs 3 (its time is the figure)
#     checks  benchmarks/gpu.py sections 6 (float16 forced, against bf16 and fp32), then 3 (training MFU, gpt2 shape);
#             then benchmarks/bench_fidelity.py on the study's baseline, where a study ran before
#     sweep   prepare the whole corpus, then benchmarks/study_sweep.py: candidate settings, 25 s of training each
#     shared  benchmarks/shared_gpu.py: tokens/s of 1 to 4 training processes on the GPU at once (--jobs)
# A first session (15 minutes of device time, the start included; one call at most 10) runs `study` in one call, then
# `checks` at once in a second (or `study` again, which continues it, if the first stopped it at STUDY_LIMIT); a later
# one `sweep shared`, and `study` again if the sweep's winner differs from small.toml's (docs/gpu.md, "What a GPU
# session runs").
#
# The device machine has no network: `pack` copies ../shared's corpus and treebanks into .gpu/shared and fetches
# the pyppmd wheel into .gpu/whl (.gpu/ is ignored: give it to the device tool's `carry`). Environment: SOURCE (the
# study's corpus, default ../shared/corpus), STUDY_ARGS, CHECKS_ARGS and SWEEP_ARGS (more arguments; a CPU dry run
# shrinks everything through them), SWEEP_SECONDS (25), STUDY_LIMIT (seconds before the study is stopped, 560).
set -u -o pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = pack ]; then
    mkdir -p .gpu/shared/eval .gpu/whl
    cp -r ../shared/corpus .gpu/shared/
    cp -r ../shared/eval/ud-portuguese .gpu/shared/eval/
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl pyppmd==1.3.1
    du -sh .gpu
    exit 0
fi

out=$(realpath -m "${1:?usage: gpu_session.sh pack | OUT STAGE...}")
shift
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python3 -c "import pyppmd" 2>/dev/null && compgen -G ".gpu/whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
repo=$PWD
# the study's paths are ../shared/...: where the folder above the repository holds none (and cannot be given a link
# to .gpu/shared), run from a folder whose parent has one
if [ ! -e ../shared ] && ! ln -s "$repo/.gpu/shared" ../shared 2>/dev/null; then
    mkdir -p /tmp/capitu-root/work && ln -sfn "$repo/.gpu/shared" /tmp/capitu-root/shared && cd /tmp/capitu-root/work
fi
source=${SOURCE:-../shared/corpus}
whole=/tmp/capitu-whole   # the corpus prepared as the study prepares it, for the sweep and the checks
study_out=/tmp/capitu-gpu-study
started=$(date +%s)
note() { echo "== $* ($(( $(date +%s) - started )) s since the start)" | tee -a "$out/session.log"; }

prepared() {
    [ -f "$whole/meta.json" ] || python3 -m capitu prepare --source "$source" --out "$whole" --vocab-size 16384 \
        --quiet 2>&1 | tee -a "$out/session.log"
}

for stage in "$@"; do
    note "stage $stage"
    case $stage in
    sweep)
        prepared
        # the study's settings (capitu/presets/study/small.toml) against smaller, larger, longer and faster ones; the
        # compiled one trains the eager rate's tokens, so its train seconds (compiling included) say what compiling buys
        base="model.pos=learned model.tie_embeddings=true model.dropout=0.0 optim.name=muon optim.lr=3e-3
              optim.muon_lr=1e-2 optim.warmup_steps=50 optim.min_lr_ratio=0.1 optim.batch_tokens=32768"
        study="$base model.n_layer=8 model.n_head=8 model.n_embd=512 model.block_size=256 optim.micro_batch=128"
        # shellcheck disable=SC2086
        python3 "$repo/benchmarks/study_sweep.py" --device cuda --preset small --seconds "${SWEEP_SECONDS:-25}" --rounds 2 \
            --data "16384=$whole" ${SWEEP_ARGS:-} \
            --candidate "8L 512 ctx256" "$study" \
            --candidate "6L 384 ctx256" "$study model.n_layer=6 model.n_head=6 model.n_embd=384" \
            --candidate "12L 768 ctx256" "$study model.n_layer=12 model.n_head=12 model.n_embd=768 optim.micro_batch=64" \
            --candidate "8L 512 ctx512" "$study model.block_size=512 optim.micro_batch=64" \
            --candidate "8L 512 ctx256 muon2e-2" "$study optim.muon_lr=2e-2" \
            --candidate "8L 512 ctx256 compiled" "$study run.compile=true" \
            2>&1 | tee "$out/sweep.log"
        ;;
    shared)
        python3 "$repo/benchmarks/shared_gpu.py" --preset small --processes 1 2 3 4 --seconds 12 \
            --set model.n_layer=8 --set model.n_head=8 --set model.n_embd=512 --set model.block_size=256 \
            --set optim.name=muon --set optim.micro_batch=128 --set optim.batch_tokens=32768 2>&1 | tee "$out/shared.log"
        ;;
    study)
        # shellcheck disable=SC2086
        timeout --signal=TERM "${STUDY_LIMIT:-560}" python3 -m capitu study --preset small --source "$source" \
            --out "$study_out" --jobs 3 --quiet ${STUDY_ARGS:-} 2>&1 | tee "$out/study.log"
        note "study ended with exit code $?"
        # what the report is made of, without the data and the weights (the device tool takes back a few files)
        (cd "$study_out" && tar czf "$out/study.tgz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.npy' --exclude=tokenizer.json \
            --exclude=data --exclude=checkpoints --exclude=best --exclude='*.pt' -- *)
        ;;
    checks)
        # after the study in the same session, its data (the corpus less its held-out texts) saves preparing the corpus
        data=$whole
        if [ ! -f "$whole/meta.json" ] && [ -f "$study_out/data/meta.json" ]; then data=$study_out/data; else prepared; fi
        # shellcheck disable=SC2086
        python3 "$repo/benchmarks/gpu.py" --only 6,3 --data "$data" --out "$out/gpu.md" ${CHECKS_ARGS:-} 2>&1 | tail -n 5
        # whether the seconds budget's bench rates are the trainer's on the GPU too (docs/measurements.md)
        baseline=$(compgen -G "$study_out/runs/baseline-s*" | head -n 1)
        [ -z "$baseline" ] || python3 "$repo/benchmarks/bench_fidelity.py" "$baseline" --rounds 5 2>&1 | tee "$out/fidelity.log"
        ;;
    *)
        echo "unknown stage $stage (sweep, shared, study, checks)" >&2
        exit 2
        ;;
    esac
done
note "done"
