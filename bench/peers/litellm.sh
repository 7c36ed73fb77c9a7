#!/usr/bin/env bash
# Opt-in peer: LiteLLM's proxy against the same mock upstream and keys, as a bench target.
# Not run in CI. Installs LiteLLM into bench/peers/.venv-litellm (gitignored) the first
# time, starts it pinned like the other proxies, runs the non-paced scenarios at c=16
# (override with extra bench.run arguments), and stops it. Results: bench/results/litellm.json.
#
#   bench/peers/litellm.sh [extra python -m bench.run arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS=bench/peers
VENV=$PEERS/.venv-litellm
MOCK_PORT=${MOCK_PORT:-18090}
PEER_PORT=${PEER_PORT:-18400}
MASTER_KEY=sk-bench-master

if [ ! -x "$VENV/bin/litellm" ]; then
  echo "litellm.sh: installing litellm[proxy] into $VENV (a few minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet 'litellm[proxy]'
fi

cat > "$PEERS/litellm-config.yaml" <<YAML
model_list:
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:$MOCK_PORT/v1", api_key: bench-key-0}
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:$MOCK_PORT/v1", api_key: bench-key-1}
  - model_name: claude-sonnet-4-5
    litellm_params: {model: anthropic/claude-sonnet-4-5, api_base: "http://127.0.0.1:$MOCK_PORT", api_key: bench-key-0}
  - model_name: claude-sonnet-4-5
    litellm_params: {model: anthropic/claude-sonnet-4-5, api_base: "http://127.0.0.1:$MOCK_PORT", api_key: bench-key-1}
router_settings:
  routing_strategy: simple-shuffle
general_settings:
  master_key: $MASTER_KEY
litellm_settings:
  drop_params: true
  telemetry: false
YAML

PIN=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then PIN=(taskset -c 1-$(($(nproc) - 1))); fi
"${PIN[@]}" "$VENV/bin/litellm" --config "$PEERS/litellm-config.yaml" --host 127.0.0.1 \
  --port "$PEER_PORT" --num_workers 1 >"$PEERS/litellm.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$PEER_PORT/health/liveliness" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then echo "litellm.sh: litellm exited; see $PEERS/litellm.log" >&2; exit 1; fi
  sleep 1
done

.venv/bin/python -m bench.run --mock-port "$MOCK_PORT" \
  --peer "litellm=http://127.0.0.1:$PEER_PORT" --peer-pid "litellm=$PID" --peer-token "$MASTER_KEY" \
  --scenario chat_json --scenario chat_sse --scenario messages_json --scenario messages_sse \
  --concurrency 16 --out bench/results/litellm.json --no-render "$@"
