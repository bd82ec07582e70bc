# Sourced by the demo stage scripts (after they set $out): timed NAME CMD... runs CMD and appends its wall time to
# $out/stage_seconds.jsonl, one {"stage": NAME, "seconds": S} line per run (a resumed stage adds lines).
timed() {
  local name=$1 t0=$EPOCHREALTIME; shift
  "$@"
  python -c "import json,sys; print(json.dumps({'stage': sys.argv[1], 'seconds': round(float(sys.argv[3]) - float(sys.argv[2]), 1)}))" \
    "$name" "$t0" "$EPOCHREALTIME" >> "$out/stage_seconds.jsonl"
}
