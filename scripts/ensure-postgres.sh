#!/usr/bin/env bash
# Make sure the local PostgreSQL cluster (Debian packaging, default 15/main) is
# running and reachable over TCP, and that the role and database used by the
# test suite exist. Idempotent: safe to run any number of times.
#
# stdout: exactly one line, the SQLAlchemy URL for the tests, e.g.
#   postgresql+asyncpg://outbox:outbox@127.0.0.1:5432/outbox
# stderr: everything else (progress, errors).
#
# Overridable through the environment:
#   OUTBOX_PG_VERSION (15)  OUTBOX_PG_CLUSTER (main)  OUTBOX_PG_HOST (127.0.0.1)
#   OUTBOX_PG_USER (outbox) OUTBOX_PG_PASSWORD (outbox) OUTBOX_PG_DB (outbox)
#   OUTBOX_PG_WAIT (30 seconds)
set -euo pipefail

PG_VERSION="${OUTBOX_PG_VERSION:-15}"
PG_CLUSTER="${OUTBOX_PG_CLUSTER:-main}"
PG_HOST="${OUTBOX_PG_HOST:-127.0.0.1}"
DB_USER="${OUTBOX_PG_USER:-outbox}"
DB_PASSWORD="${OUTBOX_PG_PASSWORD:-outbox}"
DB_NAME="${OUTBOX_PG_DB:-outbox}"
WAIT_SECONDS="${OUTBOX_PG_WAIT:-30}"

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }
die() { printf 'ensure-postgres: ERROR: %s\n' "$*" >&2; exit 1; }

# Every tool's stdout goes to stderr, so that our stdout stays the URL only.
exec 3>&1 1>&2

for tool in pg_lsclusters pg_ctlcluster pg_isready psql; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "'$tool' not found; install PostgreSQL ${PG_VERSION} (apt-get install postgresql-${PG_VERSION})"
done

# --- find the cluster -------------------------------------------------------
cluster_line() {
    # columns: Ver Cluster Port Status Owner Data-directory Log-file
    pg_lsclusters --no-header 2>/dev/null \
        | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c { print; exit }'
}

line="$(cluster_line)"
if [[ -z "$line" ]]; then
    command -v pg_createcluster >/dev/null 2>&1 \
        || die "cluster ${PG_VERSION}/${PG_CLUSTER} not found and pg_createcluster is missing"
    log "cluster ${PG_VERSION}/${PG_CLUSTER} not found; creating it"
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER"
    line="$(cluster_line)"
    [[ -n "$line" ]] || die "cluster ${PG_VERSION}/${PG_CLUSTER} still missing after pg_createcluster"
fi

PG_PORT="$(awk '{ print $3 }' <<<"$line")"
status="$(awk '{ print $4 }' <<<"$line")"
logfile="$(awk '{ print $7 }' <<<"$line")"
[[ "$PG_PORT" =~ ^[0-9]+$ ]] || die "could not read the port of ${PG_VERSION}/${PG_CLUSTER} from: $line"
log "cluster ${PG_VERSION}/${PG_CLUSTER}: port ${PG_PORT}, status ${status}"

# --- start it if needed -----------------------------------------------------
if [[ "$status" != online* ]]; then
    log "starting cluster ${PG_VERSION}/${PG_CLUSTER}"
    # The server outlives this script: it must not inherit our stdout/stderr or
    # any other open descriptor (e.g. the pipe `make` reads the URL from, or a
    # CI runner's log pipe), or whoever reads those would wait for it forever.
    start_out="$(mktemp)"
    rc=0
    (
        for fd in /proc/"$BASHPID"/fd/*; do
            fd="${fd##*/}"
            if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
                eval "exec ${fd}>&-" 2>/dev/null || true
            fi
        done
        exec pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start
    ) </dev/null >"$start_out" 2>&1 || rc=$?
    cat "$start_out" >&2
    rm -f "$start_out"
    case "$rc" in
        0) ;;
        2) log "cluster was already running" ;;
        *)
            if [[ -n "$logfile" && -r "$logfile" ]]; then
                log "last lines of ${logfile}:"
                tail -n 20 "$logfile" >&2 || true
            fi
            die "pg_ctlcluster start failed (exit ${rc})"
            ;;
    esac
fi

# --- wait until it accepts TCP connections ----------------------------------
deadline=$((SECONDS + WAIT_SECONDS))
until pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2; do
    if ((SECONDS >= deadline)); then
        pg_isready -h "$PG_HOST" -p "$PG_PORT" || true
        if [[ -n "$logfile" && -r "$logfile" ]]; then
            log "last lines of ${logfile}:"
            tail -n 20 "$logfile" >&2 || true
        fi
        die "PostgreSQL on ${PG_HOST}:${PG_PORT} not ready after ${WAIT_SECONDS}s (is listen_addresses including ${PG_HOST}?)"
    fi
    sleep 1
done
log "PostgreSQL is accepting connections on ${PG_HOST}:${PG_PORT}"

# --- run SQL as the postgres superuser (peer auth on the local socket) -------
as_postgres() {
    # cd / so that psql does not complain about an unreadable working directory
    if [[ "$(id -un)" == postgres ]]; then
        (cd / && "$@")
    elif [[ "$(id -u)" -eq 0 ]] && command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- "$@")
    elif [[ "$(id -u)" -eq 0 ]]; then
        (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    elif command -v sudo >/dev/null 2>&1; then
        (cd / && sudo -n -u postgres -- "$@")
    else
        die "need root, sudo or the postgres user to create the role and database"
    fi
}

psql_admin() {
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
}

# Identifiers/literals below are fixed defaults or trusted env overrides; they
# are passed as psql variables and quoted by psql (:"name" / :'literal').
role_exists="$(psql_admin -tA -v name="$DB_USER" \
    <<<"SELECT 1 FROM pg_roles WHERE rolname = :'name';")"
if [[ "$role_exists" == 1 ]]; then
    log "role ${DB_USER} exists; making sure of its attributes"
    psql_admin -v name="$DB_USER" -v pw="$DB_PASSWORD" \
        <<<"ALTER ROLE :\"name\" WITH LOGIN CREATEDB PASSWORD :'pw';"
else
    log "creating role ${DB_USER}"
    psql_admin -v name="$DB_USER" -v pw="$DB_PASSWORD" \
        <<<"CREATE ROLE :\"name\" WITH LOGIN CREATEDB PASSWORD :'pw';"
fi

db_exists="$(psql_admin -tA -v name="$DB_NAME" \
    <<<"SELECT 1 FROM pg_database WHERE datname = :'name';")"
if [[ "$db_exists" == 1 ]]; then
    log "database ${DB_NAME} exists; making sure ${DB_USER} owns it"
    psql_admin -v db="$DB_NAME" -v owner="$DB_USER" \
        <<<"ALTER DATABASE :\"db\" OWNER TO :\"owner\";"
else
    log "creating database ${DB_NAME} owned by ${DB_USER}"
    psql_admin -v db="$DB_NAME" -v owner="$DB_USER" \
        <<<"CREATE DATABASE :\"db\" OWNER :\"owner\";"
fi

# --- verify a password login over TCP ----------------------------------------
if ! PGPASSWORD="$DB_PASSWORD" PGCONNECT_TIMEOUT=10 psql -X -q -tA -w \
        -h "$PG_HOST" -p "$PG_PORT" -U "$DB_USER" -d "$DB_NAME" -c 'select 1' >/dev/null; then
    die "cannot log in as ${DB_USER} to ${DB_NAME} on ${PG_HOST}:${PG_PORT} with a password (check pg_hba.conf)"
fi
log "TCP login as ${DB_USER} to ${DB_NAME} on ${PG_HOST}:${PG_PORT} works"

printf 'postgresql+asyncpg://%s:%s@%s:%s/%s\n' \
    "$DB_USER" "$DB_PASSWORD" "$PG_HOST" "$PG_PORT" "$DB_NAME" >&3
