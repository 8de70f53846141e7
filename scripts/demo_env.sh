# Sourced by scripts/demo.sh (with BIN set to the venv's bin folder); tested by
# tests/bots/test_demo_dashboard.py.
# The call-records dashboard is on in the demo: a random token unless one is given, and call
# records on (the default SQLite file var/calls.db; `none` would turn the dashboard off).
if [[ -z "${STEPCALL_DASHBOARD_TOKEN:-}" ]]; then
  STEPCALL_DASHBOARD_TOKEN=$("$BIN/python" -c "import secrets; print(secrets.token_urlsafe(18))")
fi
export STEPCALL_DASHBOARD_TOKEN
if [[ "${STEPCALL_DATABASE_URL:-}" == "none" ]]; then
  echo "STEPCALL_DATABASE_URL=none turns call records off; the demo keeps them in var/calls.db"
  export STEPCALL_DATABASE_URL="sqlite:///var/calls.db"
fi
