#!/usr/bin/env bash
# Benchmarks of the nginx module (make bench-nginx). One nginx (2 workers) on
# 127.0.0.1 with three locations proxying to the same raw Go WebSocket
# backend, measured in the same run, interleaved, ROUNDS times (median):
#   none  no limiting
#   rt    ratethrottle (connect per request, frame parsing after the 101)
#   ngx   nginx's own limit_conn + limit_req on the same key
# Limits are high enough that nothing is denied; denials are reported.
# Besides throughput, the CPU time the nginx workers spent per operation is
# reported (from /proc), and, in part 2, the instructions nginx executes per
# operation under callgrind, which a shared, noisy machine does not disturb.
#
# Workloads: "upgrade" (dial, upgrade request, 101, Close, close: handshakes/s),
# "messages" (echoed 64-byte messages/s over 8 WebSockets), and "plain"
# (wrk, keep-alive GETs/s through the proxy).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
DUR="${DUR:-5}"
ROUNDS="${ROUNDS:-3}"
cd "$HERE"

SO="$(bash "$HERE/build.sh")"
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null
command -v go >/dev/null || { echo "go is needed for the load tool" >&2; exit 1; }
(cd bench && go build -o "$TARGET/nginx-bench" .)
TOOL="$TARGET/nginx-bench"

tmp="$(mktemp -d "/tmp/rt-nginx-bench-$$-XXXX")"
chmod 755 "$tmp"
backend_pid=""
master_pid=""
cleanup() {
    [ -n "$master_pid" ] && kill -TERM "$master_pid" 2>/dev/null || true
    [ -n "$backend_pid" ] && kill -TERM "$backend_pid" 2>/dev/null || true
    [ -n "$master_pid" ] && wait "$master_pid" 2>/dev/null || true
    [ -n "$backend_pid" ] && wait "$backend_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

"$TOOL" serve > "$tmp/backend.out" 2>&1 &
backend_pid=$!
for _ in $(seq 100); do grep -q PORT "$tmp/backend.out" 2>/dev/null && break; sleep 0.1; done
BPORT="$(awk '/PORT/ {print $2}' "$tmp/backend.out")"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

cat > "$tmp/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/error.log warn;
load_module $SO;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }

    ratethrottle_zone \$binary_remote_addr zone=b:16m window=1s
        connections=16000000 concurrent=1000000 messages=262143
        max_message_size=64k;
    limit_conn_zone \$binary_remote_addr zone=lc:16m;
    limit_req_zone \$binary_remote_addr zone=lr:16m rate=10000000r/s;

    upstream backend { server 127.0.0.1:$BPORT; keepalive 64; }
    server {
        listen 127.0.0.1:$PORT;
        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection \$connection_upgrade;
        location /none { proxy_pass http://backend; }
        location /rt   { ratethrottle zone=b; proxy_pass http://backend; }
        location /ngx  {
            limit_conn lc 65000;
            limit_req zone=lr burst=10000000 nodelay;
            proxy_pass http://backend;
        }
        location = /status { ratethrottle_status zone=b; }
    }
}
CONF
nginx -p "$tmp/" -c "$tmp/nginx.conf" -e "$tmp/error.log" &
master_pid=$!
for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),1)" 2>/dev/null && break
    sleep 0.1
done
kill -0 "$master_pid" 2>/dev/null || { echo "nginx did not start" >&2; cat "$tmp/error.log" >&2; exit 1; }

rate_of() { awk '/^ok/ {print $8}' <<<"$1"; }
ops_of() { awk '/^ok/ {print $2}' <<<"$1"; }
fails_of() { awk '/^ok/ {print $4}' <<<"$1"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# CPU time (clock ticks) of the nginx workers: the cost per operation is
# less disturbed by other load on a shared machine than the throughput
workers=()
for f in /proc/[0-9]*/stat; do
    read -r pid _ _ ppid _ < "$f" 2>/dev/null || continue
    [ "$ppid" = "$master_pid" ] && workers+=("$pid")
done
[ ${#workers[@]} -eq 2 ] || { echo "expected 2 workers, found ${workers[*]}" >&2; exit 1; }
worker_ticks() {
    local s=0 p
    for p in "${workers[@]}"; do
        s=$(( s + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
    done
    echo "$s"
}
HZ="$(getconf CLK_TCK)"

# warm-up: connections, TIME_WAIT churn, the engine's first client slot
for loc in none rt ngx; do
    "$TOOL" upgrade -url "127.0.0.1:$PORT/$loc/ws" -c 32 -d 1s >/dev/null
    "$TOOL" messages -url "127.0.0.1:$PORT/$loc/ws" -c 8 -d 1s >/dev/null
done

declare -A R F C
record() {  # workload loc rate ops fails ticks
    R[$1,$2]+="$3 "
    F[$1,$2]=$(( ${F[$1,$2]:-0} + $5 ))
    C[$1,$2]+="$(awk -v t="$6" -v n="$4" -v hz="$HZ" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}') "
}
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///'), 2 workers, $(nproc) cores, ${DUR}s x $ROUNDS rounds, $(date -u +%Y-%m-%dT%H:%MZ)"
locs=(none rt ngx)
for round in $(seq "$ROUNDS"); do
    # rotate the order each round so that no location always runs first
    k=$(( (round - 1) % 3 ))
    order=("${locs[@]:$k}" "${locs[@]:0:$k}")
    for loc in "${order[@]}"; do
        t0=$(worker_ticks)
        out="$("$TOOL" upgrade -url "127.0.0.1:$PORT/$loc/ws" -c 32 -d "${DUR}s")"
        record upgrade "$loc" "$(rate_of "$out")" "$(ops_of "$out")" "$(fails_of "$out")" $(( $(worker_ticks) - t0 ))
        t0=$(worker_ticks)
        out="$("$TOOL" messages -url "127.0.0.1:$PORT/$loc/ws" -c 8 -d "${DUR}s" -size 64)"
        record messages "$loc" "$(rate_of "$out")" "$(ops_of "$out")" "$(fails_of "$out")" $(( $(worker_ticks) - t0 ))
        t0=$(worker_ticks)
        out="$(wrk -t2 -c32 -d"${DUR}s" "http://127.0.0.1:$PORT/$loc/x" 2>&1)"
        rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
        n="$(awk '/requests in/ {print $1}' <<<"$out")"
        non2xx="$(awk '/Non-2xx/ {print $5}' <<<"$out")"
        record plain "$loc" "$rps" "$n" "${non2xx:-0}" $(( $(worker_ticks) - t0 ))
    done
done

printf "\nthroughput (median of %s rounds, operations/s)\n" "$ROUNDS"
printf "%-9s %10s %14s %14s %9s %9s   %s\n" workload none ratethrottle "limit_conn+req" "rt/none" "rt/ngx" "failures none/rt/ngx"
for w in upgrade messages plain; do
    n="$(tr ' ' '\n' <<<"${R[$w,none]}" | grep . | median)"
    r="$(tr ' ' '\n' <<<"${R[$w,rt]}" | grep . | median)"
    g="$(tr ' ' '\n' <<<"${R[$w,ngx]}" | grep . | median)"
    printf "%-9s %10.0f %14.0f %14.0f %9.3f %9.3f   %s/%s/%s\n" "$w" "$n" "$r" "$g" \
        "$(awk -v a="$r" -v b="$n" 'BEGIN {print a / b}')" \
        "$(awk -v a="$r" -v b="$g" 'BEGIN {print a / b}')" \
        "${F[$w,none]}" "${F[$w,rt]}" "${F[$w,ngx]}"
done
printf "\nnginx worker CPU per operation (median, microseconds; lower is better)\n"
printf "%-9s %10s %14s %14s %9s %9s\n" workload none ratethrottle "limit_conn+req" "rt-none" "rt-ngx"
for w in upgrade messages plain; do
    n="$(tr ' ' '\n' <<<"${C[$w,none]}" | grep . | median)"
    r="$(tr ' ' '\n' <<<"${C[$w,rt]}" | grep . | median)"
    g="$(tr ' ' '\n' <<<"${C[$w,ngx]}" | grep . | median)"
    printf "%-9s %10.2f %14.2f %14.2f %+9.2f %+9.2f\n" "$w" "$n" "$r" "$g" \
        "$(awk -v a="$r" -v b="$n" 'BEGIN {print a - b}')" \
        "$(awk -v a="$r" -v b="$g" 'BEGIN {print a - b}')"
done
echo
echo "per-round rates and CPU us/op:"
for w in upgrade messages plain; do
    for loc in none rt ngx; do echo "  $w $loc: ${R[$w,$loc]}| ${C[$w,$loc]}"; done
done
echo
echo "ratethrottle zone after the run (denied must be 0):"
python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:$PORT/status').read().decode())"

# ---------------------------------------------------------------------------
# Part 2: instructions per operation, which a shared machine does not
# disturb: the same three locations in one nginx process (master_process
# off) under callgrind, instrumentation switched on only while the load runs
# (callgrind_control), total instructions / operations.
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
kill -TERM "$master_pid" 2>/dev/null || true
wait "$master_pid" 2>/dev/null || true
sed -e 's/^worker_processes 2;/worker_processes 1;\nmaster_process off;/' \
    "$tmp/nginx.conf" > "$tmp/nginx-cg.conf"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/cg.out" \
    nginx -p "$tmp/" -c "$tmp/nginx-cg.conf" -e "$tmp/error.log" > "$tmp/cg.log" 2>&1 &
master_pid=$!
for _ in $(seq 150); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),1)" 2>/dev/null && break
    sleep 0.2
done
count() {  # workload location -> instructions per operation
    callgrind_control -z "$master_pid" >/dev/null 2>&1
    callgrind_control -i on "$master_pid" >/dev/null 2>&1
    local out
    if [ "$1" = plain ]; then
        out="$(wrk -t1 -c4 -d3s "http://127.0.0.1:$PORT/$2/x" 2>&1)"
        ops="$(awk '/requests in/ {print $1}' <<<"$out")"
    else
        out="$("$TOOL" "$1" -url "127.0.0.1:$PORT/$2/ws" -c 4 -d 3s)"
        ops="$(ops_of "$out")"
    fi
    callgrind_control -i off "$master_pid" >/dev/null 2>&1
    callgrind_control -d "$master_pid" >/dev/null 2>&1
    local f ir
    f="$(ls -t "$tmp"/cg.out.* | head -1)"
    ir="$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
    echo $(( ir / ops ))
}
printf "\nnginx instructions per operation (callgrind, 1 process; lower is better)\n"
printf "%-9s %10s %14s %14s %12s %12s\n" workload none ratethrottle "limit_conn+req" "rt-none" "rt-ngx"
for w in upgrade messages plain; do
    n="$(count "$w" none)"; r="$(count "$w" rt)"; g="$(count "$w" ngx)"
    printf "%-9s %10d %14d %14d %+6d (%+.1f%%) %+6d (%+.1f%%)\n" "$w" "$n" "$r" "$g" \
        $(( r - n )) "$(awk -v a="$r" -v b="$n" 'BEGIN {print (a - b) * 100 / b}')" \
        $(( r - g )) "$(awk -v a="$r" -v b="$g" 'BEGIN {print (a - b) * 100 / b}')"
done
