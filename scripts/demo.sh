#!/usr/bin/env bash
# `make demo`: model service + bot server on localhost, one simulated call, then keep serving.
set -euo pipefail
BIN="$1"; TINY="$2"
MODEL_PORT="${STEPCALL_MODEL_PORT:-8090}"; WEB_PORT="${STEPCALL_PORT:-8080}"
mkdir -p var
export STEPCALL_MODEL_URL="ws://127.0.0.1:${MODEL_PORT}/v1/session"
source "$(dirname "$0")/demo_env.sh"  # dashboard token, call records on

if [[ -n "${STEPCALL_MODEL_PATH:-}" && -e "${STEPCALL_MODEL_PATH}" ]]; then
  echo "model: Step-Audio 2 weights at ${STEPCALL_MODEL_PATH}"
  MODEL_ARGS=(--model "${STEPCALL_MODEL_PATH}")
elif [[ "${STEPCALL_DEMO_BACKEND:-cpu}" == "cpu" ]] && cpu_why=$("$BIN/python" -c \
    "from model_service.backends.cpu.model_files import resolve_cpu_models; resolve_cpu_models()" 2>&1); then
  echo "model: no Step-Audio 2 weights found (set STEPCALL_MODEL_PATH to a downloaded"
  echo "       stepfun-ai/Step-Audio-2-mini folder). Serving the OFFLINE CPU backend instead:"
  echo "       Whisper tiny.en -> Qwen2.5-1.5B (llama.cpp) -> Piper; not Step-Audio 2."
  MODEL_ARGS=(--backend cpu)
else
  echo "model: no Step-Audio 2 weights and no offline CPU models (${cpu_why:-STEPCALL_DEMO_BACKEND=tiny})."
  echo "       Serving the TINY TEST checkpoint instead: a scripted reply spoken through"
  echo "       random token2wav weights (noise-like audio)."
  MODEL_ARGS=(--backend reference --tiny-checkpoint "${TINY}")
fi

"$BIN/stepcall" model "${MODEL_ARGS[@]}" --port "$MODEL_PORT" > var/model.log 2>&1 &
MODEL_PID=$!
"$BIN/stepcall" serve --port "$WEB_PORT" > var/web.log 2>&1 &
WEB_PID=$!
trap 'kill $MODEL_PID $WEB_PID 2>/dev/null || true' EXIT INT TERM

wait_for() {  # url, pid, log
  for _ in $(seq 1 240); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "failed to start; see $3"; tail -20 "$3"; exit 1; }
    sleep 0.5
  done
  echo "timed out waiting for $1; see $3"; exit 1
}
wait_for "http://127.0.0.1:${MODEL_PORT}/readyz" $MODEL_PID var/model.log
wait_for "http://127.0.0.1:${WEB_PORT}/healthz" $WEB_PID var/web.log
# the bots' verbatim greetings are rendered by the model service at start-up: /readyz says
# when they are (a call placed before would wait for its greeting)
wait_for "http://127.0.0.1:${WEB_PORT}/readyz" $WEB_PID var/web.log

echo
echo "bot server:          http://127.0.0.1:${WEB_PORT}/"
echo "Twilio voice webhook: http://127.0.0.1:${WEB_PORT}/twilio/voice  (POST; expose it with a public URL and set STEPCALL_PUBLIC_URL)"
echo "media stream:        ws://127.0.0.1:${WEB_PORT}/twilio/stream"
echo "browser widget:      http://127.0.0.1:${WEB_PORT}/call  (talk to the bot from this machine's browser)"
echo "dashboard:           $(STEPCALL_PORT="$WEB_PORT" "$BIN/stepcall" dashboard-url)  (the calls made)"
echo
echo "placing a simulated call (var/demo-call.wav: left = caller, right = bot) ..."
"$BIN/stepcall" call "ws://127.0.0.1:${WEB_PORT}/twilio/stream" \
  --greeting-wait 15 --say "Hello, what time do you open tomorrow?" --out var/demo-call.wav || true
echo
echo "serving; press Ctrl-C to stop (logs: var/model.log, var/web.log)"
wait $WEB_PID
