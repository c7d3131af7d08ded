#!/usr/bin/env bash
# Scale-out, side by side in one run (issue #19): on one PostgreSQL (Debian's, initdb into a
# temp folder on loopback, as the tests start it),
#   1. batch inference over one archive shared through the job queue by 1, 2 and 3
#      `oncolens predict --jobs` workers;
#   2. uploads through nginx to 1 and to 3 `oncolens serve` replicas (sharing one objects
#      folder), from 6 concurrent clients for a fixed time.
# Each worker and replica is held to one core (RAYON_NUM_THREADS=1, --workers 1), as one small
# machine each; this machine has `nproc` cores, so past that the figures show the sharing
# itself working, not more hardware. Prints a Markdown table.
#
#   benches/scale.sh                 # 240 slices, 30 s of uploads per set-up
#   N=60 SECONDS_EACH=10 benches/scale.sh   # a quick look
#   BIN=target/debug/oncolens benches/scale.sh   # a binary already built
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-240}
SECONDS_EACH=${SECONDS_EACH:-30}
CLIENTS=${CLIENTS:-6}
BIN=${BIN:-target/release/oncolens}
DATA=../shared/data/brain-tumor-mri/Testing
[ -d "$DATA" ] || { echo "needs $DATA (the shared data set)" >&2; exit 1; }
if [ "$BIN" = target/release/oncolens ]; then cargo build --release --locked --quiet; fi
BIN=$(realpath "$BIN")
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$PGBIN/postgres" ] || { echo "needs Debian's postgresql" >&2; exit 1; }
[ -x /usr/sbin/nginx ] || { echo "needs Debian's nginx" >&2; exit 1; }

WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -d "$WORK/pg/data" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" stop -m immediate >/dev/null 2>&1
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# PostgreSQL, owned by `postgres` when run as root (it refuses root).
mkdir -p "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/pg"
PGPORT=$(free_port)
as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U oncolens --auth=trust >/dev/null
as_pg "$PGBIN/postgres" -D "$WORK/pg/data" -p "$PGPORT" -k "$WORK/pg" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c max_connections=100 >"$WORK/pg/log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do as_pg "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PGPORT" -q && break; sleep 0.2; done
db() { as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U oncolens "$1"; echo "postgres://oncolens@127.0.0.1:$PGPORT/$1"; }

# The archive: the first N slices of the Testing set, one folder.
mkdir -p "$WORK/archive"
find "$DATA" -type f \( -name '*.jpg' -o -name '*.png' \) | sort | head -n "$N" | while read -r f; do
  cp "$f" "$WORK/archive/$(basename "$(dirname "$f")")-$(basename "$f")"
done
N=$(ls "$WORK/archive" | wc -l)

echo "| set-up | seconds | per second | vs one |"
echo "|---|---|---|---|"
BASE=""
for w in 1 2 3; do
  url=$(db "batch$w")
  start=$(date +%s.%N)
  for i in $(seq "$w"); do
    RAYON_NUM_THREADS=1 "$BIN" predict --jobs "$url" --queue archive --worker "w$i" --format csv \
      "$WORK/archive" >/dev/null 2>"$WORK/batch$w-$i.log" &
  done
  wait $(jobs -p | tail -n "$w")
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  rate=$(echo "scale=2; $N / $secs" | bc)
  [ -z "$BASE" ] && BASE=$rate
  echo "| \`predict --jobs\`, $w worker(s), $N slices | $(printf %.1f "$secs") | $rate slices | $(echo "scale=2; $rate / $BASE" | bc)x |"
done

# Uploads through nginx.
KEY="$WORK/data.key"
"$BIN" key new --out "$KEY" >/dev/null
mapfile -t SAMPLE < <(ls "$WORK/archive" | head -n 24)
BASE=""
for r in 1 3; do
  url=$(db "serve$r")
  objects="$WORK/objects$r"
  ports=()
  for i in $(seq "$r"); do
    p=$(free_port)
    ports+=("$p")
    RAYON_NUM_THREADS=1 "$BIN" serve --bind "127.0.0.1:$p" --database "$url" --key-file "$KEY" \
      --objects "$objects" --workers 1 --queue 16 >"$WORK/serve$r-$i.log" 2>&1 &
    PIDS+=($!)
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 600); do curl -sf "http://127.0.0.1:$p/readyz" >/dev/null && break; sleep 0.2; done
  done
  front=$(free_port)
  mkdir -p "$WORK/nginx$r"
  servers=""
  for p in "${ports[@]}"; do servers+="        server 127.0.0.1:$p max_fails=1 fail_timeout=2s;"$'\n'; done
  user=""; [ "$(id -u)" = 0 ] && user="user root root;"
  python3 - "$WORK/nginx$r" "$user" "$front" "$servers" <<'EOF' >"$WORK/nginx$r/nginx.conf"
import sys
prefix, user, port, servers = sys.argv[1:5]
text = open("docs/deployment/nginx-test.conf.in").read()
print(text.replace("@PREFIX@", prefix).replace("@USER@", user).replace("@SERVERS@", servers).replace("@PORT@", port))
EOF
  /usr/sbin/nginx -p "$WORK/nginx$r" -c "$WORK/nginx$r/nginx.conf" &
  PIDS+=($!)
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$front/healthz" >/dev/null && break; sleep 0.1; done
  end=$(( $(date +%s) + SECONDS_EACH ))
  for c in $(seq "$CLIENTS"); do
    (
      n=0
      while [ "$(date +%s)" -lt "$end" ]; do
        f="$WORK/archive/${SAMPLE[$(( (c * 7 + n) % ${#SAMPLE[@]} ))]}"
        code=$(curl -s -o /dev/null -w '%{http_code}' -F "image=@$f" "http://127.0.0.1:$front/api/v1/analyses")
        [ "$code" = 201 ] && echo ok
        n=$((n + 1))
      done
    ) >"$WORK/clients$r-$c.txt" &
  done
  wait $(jobs -p | tail -n "$CLIENTS")
  done_n=$(cat "$WORK"/clients$r-*.txt | wc -l)
  rate=$(echo "scale=2; $done_n / $SECONDS_EACH" | bc)
  [ -z "$BASE" ] && BASE=$rate
  echo "| uploads through nginx, $r replica(s), $CLIENTS clients, $SECONDS_EACH s | $SECONDS_EACH | $rate analyses | $(echo "scale=2; $rate / $BASE" | bc)x |"
  for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done
  PIDS=("${PIDS[0]}")
  sleep 1
done
echo
echo "$(nproc) cores; one core per worker and replica; $(basename "$BIN") at $(git rev-parse --short HEAD)"
