#!/usr/bin/env bash
# tools/mlflow_server.sh - the team's MLflow tracking server for greg-ood: PostgreSQL backend store, artifacts proxied
# by the server to a local folder or an S3-compatible bucket. Clients only set MLFLOW_TRACKING_URI=http://HOST:PORT.
#
# Usage:
#   tools/mlflow_server.sh [--host H] [--port P] [--workers N] [--dry-run] [-- MLFLOW-SERVER-FLAGS...]
#   tools/mlflow_server.sh --init-db     create (or update) the role and database in a local PostgreSQL, then exit
#   tools/mlflow_server.sh --help
#
# Database (the URI passed is postgresql+DRIVER://USER@HOST:PORT/DB; the password travels in PGPASSWORD, not argv):
#   MLFLOW_PG_HOST      127.0.0.1            MLFLOW_PG_USER      mlflow
#   MLFLOW_PG_PORT      5432                 MLFLOW_PG_DB        mlflow
#   MLFLOW_PG_PASSWORD  (empty: libpq looks in ~/.pgpass; required by --init-db)
#   MLFLOW_PG_SSLMODE   (empty; e.g. require, verify-full for a remote database)
#   MLFLOW_PG_DRIVER    psycopg2 (psycopg2-binary, in requirements.txt). Named explicitly because SQLAlchemy >= 2.1
#                       maps a bare postgresql:// to psycopg 3 ("No module named 'psycopg'"); `psycopg` also works
#                       after `pip install "psycopg[binary]"`.
#   MLFLOW_BACKEND_STORE_URI   a full SQLAlchemy URI instead of the MLFLOW_PG_* pieces
# Server:
#   MLFLOW_HOST         127.0.0.1  (local only; see "Exposing" below)
#   MLFLOW_PORT         5000
#   MLFLOW_WORKERS      2          (uvicorn worker processes)
#   MLFLOW_ARTIFACTS_DESTINATION   <repo>/mlartifacts, or s3://bucket/prefix (proxied: clients need no S3 credentials)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION   false  (MLflow's GenAI job runner: not used by greg-ood)
#   MLFLOW_BIN          <repo>/.venv/bin/mlflow if present, else `mlflow` on PATH
# S3-compatible artifacts (MinIO, Ceph, AWS): `pip install boto3` in the server's environment (not in
# requirements.txt), create the bucket first, and set
#   MLFLOW_S3_ENDPOINT_URL=http://minio.lab:9000   (omit for AWS)   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
#   (or a ~/.aws profile via AWS_PROFILE); MLFLOW_S3_IGNORE_TLS=true for a self-signed endpoint.
#
# Exposing (default: bound to 127.0.0.1; team members can use `ssh -L 5000:127.0.0.1:5000 server`):
#   tools/mlflow_server.sh --host 0.0.0.0 -- --allowed-hosts 'mlflow.lab.example:*,localhost:*,127.0.0.1:*'
#   The server has NO authentication: anyone who reaches the port can read, change and delete every run. Expose it only
#   on a trusted network or behind a reverse proxy with TLS + auth. MLflow's security middleware checks the Host
#   header: by default localhost and private IPs pass and DNS names get 403; --allowed-hosts (MLFLOW_SERVER_ALLOWED_HOSTS)
#   REPLACES that list, so keep localhost:* and 127.0.0.1:* in it. --cors-allowed-origins is needed only for browser
#   apps served from another origin. MLflow's own login (`-- --app-name basic-auth`) needs `pip install "mlflow[auth]"`.
#
# --init-db runs psql as the PostgreSQL superuser over the local socket: as root `runuser -u postgres`, otherwise
# `sudo -u postgres` when available, else psql as yourself (MLFLOW_PG_SUPERUSER names another OS user; PGHOST/PGPORT
# override the socket). With PGUSER set it runs plain psql with your libpq settings (PGHOST, PGPORT, PGUSER,
# PGPASSWORD: e.g. an admin login on a managed database). It is idempotent and (re)sets the role's password to
# MLFLOW_PG_PASSWORD. --dry-run prints the server command (no password in it) and exits without touching anything.
# The server runs in the foreground (exec); stop it with Ctrl-C or SIGTERM.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

usage() { sed -n '2,/^set -euo pipefail$/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { echo "mlflow_server.sh: error: $*" >&2; exit 2; }
warn() { echo "mlflow_server.sh: warning: $*" >&2; }

mode=serve
dry_run=0
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-2}"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --init-db) mode=init ;;
    --dry-run) dry_run=1 ;;
    --host) [ $# -ge 2 ] || die "--host needs a value"; host="$2"; shift ;;
    --host=*) host="${1#*=}" ;;
    --port) [ $# -ge 2 ] || die "--port needs a value"; port="$2"; shift ;;
    --port=*) port="${1#*=}" ;;
    --workers) [ $# -ge 2 ] || die "--workers needs a value"; workers="$2"; shift ;;
    --workers=*) workers="${1#*=}" ;;
    --) shift; extra+=("$@"); break ;;
    *) extra+=("$1") ;;   # anything else goes to `mlflow server` unchanged
  esac
  shift
done

pg_host="${MLFLOW_PG_HOST:-127.0.0.1}"
pg_port="${MLFLOW_PG_PORT:-5432}"
pg_user="${MLFLOW_PG_USER:-mlflow}"
pg_db="${MLFLOW_PG_DB:-mlflow}"
pg_password="${MLFLOW_PG_PASSWORD:-}"
pg_sslmode="${MLFLOW_PG_SSLMODE:-}"
pg_driver="${MLFLOW_PG_DRIVER:-psycopg2}"

[[ "$pg_user" =~ ^[a-z_][a-z0-9_]*$ ]] || die "MLFLOW_PG_USER='$pg_user': use lower-case letters, digits and _"
[[ "$pg_db" =~ ^[a-z_][a-z0-9_]*$ ]] || die "MLFLOW_PG_DB='$pg_db': use lower-case letters, digits and _"
[[ "$pg_port" =~ ^[0-9]+$ ]] || die "MLFLOW_PG_PORT='$pg_port' is not a port number"

# ---------------------------------------------------------------------------------------------------------------------
if [ "$mode" = init ]; then
  [ -n "$pg_password" ] || die "--init-db needs MLFLOW_PG_PASSWORD (the password to give role '$pg_user')"
  command -v psql >/dev/null || die "psql not found: install PostgreSQL first (Debian/Ubuntu: apt-get install postgresql)"
  su_user="${MLFLOW_PG_SUPERUSER:-postgres}"
  if [ -n "${PGUSER:-}" ]; then
    psql_cmd=(psql)
  elif [ "$(id -u)" = 0 ]; then
    psql_cmd=(runuser -u "$su_user" -- psql)
  elif [ "$(id -un)" != "$su_user" ] && command -v sudo >/dev/null; then
    psql_cmd=(sudo "--preserve-env=PGHOST,PGPORT" -u "$su_user" psql)
  else
    psql_cmd=(psql)
  fi
  export PGPORT="${PGPORT:-$pg_port}"
  pw_sql="${pg_password//\'/\'\'}"   # SQL string literal (standard_conforming_strings: only ' needs doubling)
  # The SQL (password included) goes through stdin, not the command line.
  "${psql_cmd[@]}" -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
SELECT format('CREATE ROLE %I LOGIN', '$pg_user') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$pg_user')
\gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', '$pg_user', '$pw_sql')
\gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$pg_db', '$pg_user')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$pg_db')
\gexec
SQL
  echo "mlflow_server.sh: role '$pg_user' and database '$pg_db' ready (port $PGPORT). Start the server with:"
  echo "  MLFLOW_PG_PASSWORD=... $0"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------------------
mlflow_bin="${MLFLOW_BIN:-}"
if [ -z "$mlflow_bin" ]; then
  if [ -x "$repo/.venv/bin/mlflow" ]; then mlflow_bin="$repo/.venv/bin/mlflow"
  else mlflow_bin="$(command -v mlflow || true)"; fi
fi
if [ -z "$mlflow_bin" ] || [ ! -x "$mlflow_bin" ]; then die "mlflow not found: run 'make setup' or set MLFLOW_BIN"; fi
py="$(dirname "$mlflow_bin")/python"
[ -x "$py" ] || py="$(command -v python3)"

if [ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
  backend="$MLFLOW_BACKEND_STORE_URI"
else
  backend="postgresql+${pg_driver}://${pg_user}@${pg_host}:${pg_port}/${pg_db}"
  [ -z "$pg_sslmode" ] || backend="${backend}?sslmode=${pg_sslmode}"
  # libpq (psycopg2) reads the password from PGPASSWORD: it stays out of `ps` output and of MLflow's logs.
  [ -z "$pg_password" ] || export PGPASSWORD="$pg_password"
fi

artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$repo/mlartifacts}"
case "$artifacts" in
  s3://*)
    "$py" -c 'import boto3' 2>/dev/null \
      || die "artifacts in $artifacts need boto3 in the server's environment: $py -m pip install boto3"
    if [ -z "${AWS_ACCESS_KEY_ID:-}" ] && [ -z "${AWS_PROFILE:-}" ] && [ ! -e "${HOME:-/nonexistent}/.aws/credentials" ]; then
      warn "no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials: S3 requests may be refused"
    fi
    [ -z "${MLFLOW_S3_ENDPOINT_URL:-}" ] || echo "mlflow_server.sh: S3 endpoint $MLFLOW_S3_ENDPOINT_URL" >&2 ;;
  *://*) ;;   # other stores MLflow supports (gs://, wasbs://, ...): passed through
  *) artifacts="$("$py" -c 'import os, sys; print(os.path.abspath(os.path.expanduser(sys.argv[1])))' "$artifacts")"
     [ "$dry_run" = 1 ] || mkdir -p "$artifacts" ;;
esac

case "$host" in
  127.*|localhost|::1) ;;
  *) if [ -z "${MLFLOW_SERVER_ALLOWED_HOSTS:-}" ] && [[ " ${extra[*]-} " != *" --allowed-hosts"* ]]; then
       warn "listening on $host without --allowed-hosts: requests whose Host header is a DNS name are refused" \
            "(only localhost and private IPs pass). The server has no authentication; see --help, 'Exposing'."
     fi ;;
esac

export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
cmd=("$mlflow_bin" server
     --backend-store-uri "$backend"
     --serve-artifacts --artifacts-destination "$artifacts"
     --host "$host" --port "$port" --workers "$workers"
     ${extra[@]+"${extra[@]}"})

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi

# A clear message now instead of a traceback from the server's schema migration.
if [[ "$backend" == postgresql* ]]; then
  "$py" - "$backend" <<'PY' || exit 2
import sys
try:
    import sqlalchemy
except ImportError:
    sys.exit("mlflow_server.sh: error: sqlalchemy is missing in the server's environment")
uri = sys.argv[1]
try:
    eng = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 10})
    with eng.connect():
        pass
except ModuleNotFoundError as e:
    sys.exit(f"mlflow_server.sh: error: {e}: install the PostgreSQL driver in the server's environment "
             "(psycopg2-binary for postgresql+psycopg2://, psycopg[binary] for postgresql+psycopg://)")
except Exception as e:  # noqa: BLE001
    msg = str(getattr(e, "orig", e)).strip().splitlines()[0]
    safe = sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    sys.exit(f"mlflow_server.sh: error: cannot connect to {safe}: {msg}\n"
             "  Is PostgreSQL running? Are MLFLOW_PG_PASSWORD (or ~/.pgpass) and MLFLOW_PG_* right? "
             "A new local database: MLFLOW_PG_PASSWORD=... tools/mlflow_server.sh --init-db")
PY
fi

shown="$(printf '%s' "${backend%%\?*}" | sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#')"
echo "mlflow_server.sh: serving http://$host:$port (backend $shown, artifacts $artifacts);" \
     "clients: export MLFLOW_TRACKING_URI=http://<this host>:$port" >&2
exec "${cmd[@]}"
