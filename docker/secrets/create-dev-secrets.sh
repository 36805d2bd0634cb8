#!/usr/bin/env bash
# Creates random development secrets for docker-compose.yml (never committed: see .gitignore).
# Put real provider keys in alpaca_api_key / alpaca_api_secret yourself.
set -euo pipefail
cd "$(dirname "$0")"
random() { head -c 24 /dev/urandom | base64 | tr -d '/+=' ; }
[ -f postgres_password ] || random > postgres_password
[ -f database_url ] || echo "postgresql://stockpulse:$(cat postgres_password)@postgres:5432/stockpulse" > database_url
[ -f flower_password ] || random > flower_password
[ -f flower_basic_auth ] || echo "admin:$(cat flower_password)" > flower_basic_auth
[ -f grafana_admin_password ] || random > grafana_admin_password
for key in alpaca_api_key alpaca_api_secret; do [ -f "$key" ] || : > "$key"; done
# Alertmanager's receivers: a Slack(-compatible) incoming-webhook URL and the SMTP relay's password, from the
# environment (the loopback default goes nowhere: set ALERT_WEBHOOK_URL before the first run).
[ -f alert_webhook_url ] || echo "${ALERT_WEBHOOK_URL:-http://127.0.0.1:9/unset}" > alert_webhook_url
[ -f smtp_password ] || printf '%s' "${SMTP_PASSWORD:-}" > smtp_password
chmod 600 ./*_password ./*_url ./*_auth ./*_key ./*_secret
echo "secrets in $(pwd); add your Alpaca key and secret to alpaca_api_key / alpaca_api_secret"
