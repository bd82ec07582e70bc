# Sourced by the demo stage scripts (after they set $out): timed NAME CMD... runs CMD and appends its wall time to
# $out/stage_seconds.jsonl, one {"stage": NAME, "seconds": S} line per run (a resumed stage adds lines). A run that
# fails or is stopped (SIGINT, SIGTERM) is logged too, with its "exit_status", so a stage resumed after it counts
# the time of every attempt; the script then stops with that status.
_timed_log() {
  python -c "import json,sys; rc=int(sys.argv[4]); print(json.dumps({'stage': sys.argv[1], 'seconds': round(float(sys.argv[3]) - float(sys.argv[2]), 1), **({'exit_status': rc} if rc else {})}))" \
    "$_timed_name" "$_timed_t0" "$EPOCHREALTIME" "$1" >> "$out/stage_seconds.jsonl"
}
timed() {
  _timed_name=$1 _timed_t0=$EPOCHREALTIME
  shift
  local rc=0
  trap '_timed_log 130; exit 130' INT
  trap '_timed_log 143; exit 143' TERM
  "$@" || rc=$?
  trap - INT TERM
  _timed_log "$rc"
  return "$rc"
}
