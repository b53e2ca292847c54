#!/usr/bin/env bash
# The GPU check, one script, under 8 minutes on one H100; results in one JSON file.
#
#   benchmarks/gpu_check.sh [OUT.json]        (default gpu_check.json; needs `make install`)
#
# 1. the tests marked gpu;
# 2. bench train, bf16, at 224: ViT-B/16 (batch 128) and ViT-H/14 (batch 32): images/s, MFU
#    against the bf16 matmul peak measured in the same run, peak memory;
# 3. DDP with one process on NCCL (torchrun): a short pretrain on synthetic data;
# then benchmarks/scaling.py with the measured ViT-H/14 images/s (GPU-hours of the recipe).
# QUICK=1 runs the same steps with tiny models (a check of the script itself, on a CPU too).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check.json}
BIN=${BIN:-.venv/bin}
WORK=$(mktemp -d)
B16="--model vit_base_patch16 --batch-size 128 --steps 10 --warmup 3"
H14="--model vit_huge_patch14 --batch-size 32 --steps 5 --warmup 2"
DDP_STEPS=200
if [ "${QUICK:-0}" = 1 ]; then
    B16="--model vit_tiny_patch16 --batch-size 4 --steps 1 --warmup 1"; H14=$B16; DDP_STEPS=5
fi

timeout 150 "$BIN/python" -m pytest -q -m gpu tests > "$WORK/tests.txt" 2>&1
echo $? > "$WORK/tests.rc"
# shellcheck disable=SC2086  # the option strings are meant to split
timeout 120 "$BIN/imagejepa" bench train $B16 --precision bf16 > "$WORK/vit_b16.json" 2> "$WORK/vit_b16.err"
# shellcheck disable=SC2086
timeout 180 "$BIN/imagejepa" bench train $H14 --precision bf16 > "$WORK/vit_h14.json" 2> "$WORK/vit_h14.err"
timeout 120 "$BIN/torchrun" --standalone --nproc-per-node 1 -m imagejepa pretrain \
    --config configs/fmnist_vit_tiny.yaml --run-dir "$WORK/ddp" --set data.dataset=synthetic \
    --set model.in_chans=3 --set train.max_steps=$DDP_STEPS --set train.budget_minutes=null \
    > "$WORK/ddp.out" 2> "$WORK/ddp.err"
echo $? > "$WORK/ddp.rc"

"$BIN/python" - "$WORK" "$OUT" <<'PY'
import csv, json, subprocess, sys
from pathlib import Path

work, out = Path(sys.argv[1]), sys.argv[2]
def read_json(name):
    try:
        return json.loads((work / name).read_text().strip().splitlines()[-1])
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "stderr": (work / name.replace(".json", ".err")).read_text()[-2000:]}
tests = (work / "tests.txt").read_text().strip().splitlines()
rows = list(csv.DictReader(open(work / "ddp" / "metrics.csv"))) if (work / "ddp" / "metrics.csv").exists() else []
steady = [float(r["img_per_s"]) for r in rows[len(rows) // 2:]]
result = {
    "tests": {"exit": int((work / "tests.rc").read_text()), "summary": tests[-1] if tests else ""},
    "bench_train_vit_b16": read_json("vit_b16.json"),
    "bench_train_vit_h14": read_json("vit_h14.json"),
    "ddp_one_process_nccl": {
        "exit": int((work / "ddp.rc").read_text()),
        "start_up": next((l for l in (work / "ddp.out").read_text().splitlines() if "process" in l), ""),
        "steps": len(rows),
        "img_per_s_second_half": round(sum(steady) / len(steady), 1) if steady else None,
        "stderr_tail": (work / "ddp.err").read_text()[-1500:],
    },
}
vith = result["bench_train_vit_h14"].get("img_per_s")
if vith:
    scaling = subprocess.run([sys.executable, "benchmarks/scaling.py", "--img-per-s-per-gpu", str(vith)],
                             capture_output=True, text=True)
    result["scaling"] = json.loads(scaling.stdout) if scaling.returncode == 0 else {"error": scaling.stderr[-2000:]}
Path(out).write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
PY
