#!/usr/bin/env bash
# The feedback loop on real slices, through the API, as a hospital would run it
# (docs/feedback.md reports its result).
#
# "Hospital B" is the part of the official Testing folder that has no exact or near copy in
# Training (the leak-free subset on which the default model is right about a third of the time).
# It is split, with near-duplicates within Testing kept together, into slices a clinician
# corrects (uploaded to a running server, each answered, each given its true class through
# the API) and slices kept apart to measure on. Then: `feedback export`, `finetune` (with a
# replay of Training), `model register`, and `model promote --dry-run` on hospital B's
# held-out slices and on the default model's own validation slices (the original domain), and
# a real promotion on both.
#
# The fine-tuned model is an experiment: it has seen Testing images, so its Testing figures are
# not comparable with the model card's, and it is not the bundled model.
#
# Usage: scripts/feedback-experiment.sh [DATA] [WORK]   (needs curl and python3)
# Settings from the environment: EPOCHS (10), REPLAY_RATIO (2), LEARNING_RATE (2e-5),
# FEEDBACK_SHARE (0.6 of hospital B's groups are corrected, the rest measured on).
set -euo pipefail

DATA=${1:-../shared/data/brain-tumor-mri}
WORK=${2:-runs/feedback-experiment}
BIN=${ONCOLENS_BIN:-target/release/oncolens}
FEEDBACK_SHARE=${FEEDBACK_SHARE:-0.6}
EPOCHS=${EPOCHS:-10}
REPLAY_RATIO=${REPLAY_RATIO:-2}
LEARNING_RATE=${LEARNING_RATE:-2e-5}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
rm -rf "$WORK"
mkdir -p "$WORK"

echo "== leak check and near-duplicate groups (oncolens audit)"
"$BIN" audit "$DATA" --exclusions "$WORK/exclusions.json" --quiet > "$WORK/audit.txt"

echo "== hospital B: leak-free Testing slices, split by near-duplicate group"
python3 - "$DATA" "$WORK" "$FEEDBACK_SHARE" <<'PY'
import hashlib, json, os, sys
data, work, share = sys.argv[1], sys.argv[2], float(sys.argv[3])
ex = json.load(open(os.path.join(work, "exclusions.json")))
leaked = set(ex["leaked_test_images"])
testing = []
for cls in sorted(os.listdir(os.path.join(data, "Testing"))):
    d = os.path.join(data, "Testing", cls)
    if os.path.isdir(d):
        testing += [f"Testing/{cls}/{f}" for f in sorted(os.listdir(d))]
free = [f for f in testing if f not in leaked]
# Union-find over the duplicate groups, so that copies within Testing stay on one side.
parent = {f: f for f in free}
def find(x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x
for g in ex["groups"]:
    members = [m for m in g if m in parent]
    for m in members[1:]:
        parent[find(m)] = find(members[0])
counts = {"feedback": {}, "holdout": {}}
for f in free:
    root = find(f)
    h = int(hashlib.sha256(root.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    side = "feedback" if h < share else "holdout"
    cls = f.split("/")[1]
    dst = os.path.join(work, "hospital-b", side, cls)
    os.makedirs(dst, exist_ok=True)
    os.symlink(os.path.abspath(os.path.join(data, f)), os.path.join(dst, os.path.basename(f)))
    counts[side][cls] = counts[side].get(cls, 0) + 1
# The default model's own validation slices (its split.json): the original domain.
split = json.load(open("models/default/split.json"))
for f in split["validation"]:
    dst = os.path.join(work, "original-validation", os.path.dirname(f))
    os.makedirs(dst, exist_ok=True)
    os.symlink(os.path.abspath(os.path.join(data, "Training", f)), os.path.join(dst, os.path.basename(f)))
print(f"{len(free)} leak-free Testing slices: feedback {counts['feedback']}, held out {counts['holdout']}; "
      f"{len(split['validation'])} original validation slices")
PY

echo "== a server with the bundled model; every feedback slice uploaded and corrected"
DB="sqlite://$WORK/hospital-b.db"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --bind "127.0.0.1:$PORT" --database "$DB" > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do sleep 0.5; done
BASE="http://127.0.0.1:$PORT" python3 - "$WORK/hospital-b/feedback" <<'PY'
import json, os, subprocess, sys
base, root = os.environ["BASE"], sys.argv[1]
agree = n = 0
for cls in sorted(os.listdir(root)):
    for f in sorted(os.listdir(os.path.join(root, cls))):
        out = subprocess.run(["curl", "-sf", "-F", f"image=@{os.path.join(root, cls, f)}",
                              f"{base}/api/v1/analyses"], capture_output=True, check=True).stdout
        a = json.loads(out)
        body = json.dumps({"class_id": cls, "comment": "experiment"})
        subprocess.run(["curl", "-sf", "-H", "Content-Type: application/json", "-d", body,
                        f"{base}/api/v1/analyses/{a['id']}/feedback"], capture_output=True, check=True)
        n += 1
        agree += a["class_id"] == cls
print(f"{n} slices uploaded and given their class; the model had {agree} right ({100 * agree / n:.1f} %)")
PY
curl -sf "http://127.0.0.1:$PORT/api/v1/feedback/agreement" > "$WORK/agreement.json"

echo "== export, fine-tune, register"
"$BIN" feedback export --database "$DB" --out "$WORK/export" --holdout 0
START=$(date +%s)
"$BIN" finetune --model models/default --feedback "$WORK/export" --data "$DATA/Training" \
  --out "$WORK/finetuned" --epochs "$EPOCHS" --replay-ratio "$REPLAY_RATIO" \
  --learning-rate "$LEARNING_RATE" --quiet 2>&1 | tee "$WORK/finetune.txt"
echo "finetune took $(( $(date +%s) - START )) s" | tee -a "$WORK/finetune.txt"
"$BIN" model register "$WORK/finetuned" --database "$DB"
VERSION=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["weights_sha256"][:12])' "$WORK/finetuned/model.json")

echo "== held-out comparisons (served: the bundled model)"
for set in hospital-b/holdout original-validation; do
  echo "-- $set"
  "$BIN" model promote "$VERSION" --eval "$WORK/$set" --database "$DB" --dry-run | tee "$WORK/compare-$(basename $set).txt"
done
echo "-- promotion on both"
"$BIN" model promote "$VERSION" --eval "$WORK/hospital-b/holdout" --eval "$WORK/original-validation" \
  --database "$DB" | tee "$WORK/promote.txt" || true
until curl -sf "http://127.0.0.1:$PORT/api/v1/model" | grep -q "$VERSION"; do
  if grep -q "refused" "$WORK/promote.txt"; then break; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/api/v1/model" | python3 -c 'import json,sys; print("served now:", json.load(sys.stdin)["version"])'
