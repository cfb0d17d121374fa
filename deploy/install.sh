#!/usr/bin/env bash
# Install tradebotd as a systemd service on a VPS (Debian/Ubuntu), from this checkout.
#
#   sudo deploy/install.sh            # or: sudo make install-service
#   deploy/install.sh --dry-run       # print what it would do, change nothing
#   DESTDIR=/tmp/stage deploy/install.sh --no-venv   # lay the files out under a staging root
#
# What it does (every step is idempotent: run it again to upgrade the package; it never
# overwrites a config or secrets file that exists):
#   - a system user and group `tradebotd` (no login shell, home /var/lib/tradebotd);
#   - /opt/tradebotd/venv: a virtualenv with this checkout installed (builds the sandbox module);
#   - /etc/tradebotd/config.toml from config.example.toml, store under /var/lib/tradebotd;
#   - /etc/tradebotd/tradebotd.env, mode 0600 root:root, for secrets (CRON_SECRET, exchange keys);
#   - /var/lib/tradebotd (mode 0750, owned by tradebotd): the store and the compiled-sandbox cache,
#     warmed once here so the first start does not compile;
#   - /etc/systemd/system/tradebotd.service, then daemon-reload and enable (start with --start).
#
# With DESTDIR set, files go under $DESTDIR and nothing outside it is touched: no user, no chown,
# no systemctl (for packaging, and for the tests).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

DRY_RUN=0
NO_VENV=0
START=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --no-venv) NO_VENV=1 ;;
        --start) START=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

SRC="$(cd "$(dirname "$0")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
PYTHON="${PYTHON:-python3}"
USER_NAME=tradebotd
OPT="$DESTDIR/opt/tradebotd"
ETC="$DESTDIR/etc/tradebotd"
STATE="$DESTDIR/var/lib/tradebotd"
UNIT_DIR="$DESTDIR/etc/systemd/system"

# Run a command, or only print it with --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Write stdin to a file unless it exists (configs and secrets are the operator's from then on).
write_once() {
    local path="$1" mode="$2"
    if [ -e "$path" ]; then
        echo "keeping $path"
        cat > /dev/null
        return
    fi
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ write %s (mode %s)\n' "$path" "$mode"
        cat > /dev/null
        return
    fi
    (umask 077 && cat > "$path")
    chmod "$mode" "$path"
    echo "wrote $path"
}

if [ -z "$DESTDIR" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or use --dry-run, or set DESTDIR" >&2
    exit 1
fi
[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/systemd/tradebotd.service" ] || {
    echo "install.sh: $SRC is not a tradebotd checkout" >&2
    exit 1
}

# 1. the system user
if [ -z "$DESTDIR" ]; then
    if id -u "$USER_NAME" > /dev/null 2>&1; then
        echo "user $USER_NAME exists"
    else
        run useradd --system --user-group --home-dir /var/lib/tradebotd --no-create-home \
            --shell /usr/sbin/nologin --comment "tradebotd trading daemon" "$USER_NAME"
    fi
fi

# 2. directories
run install -d -m 0755 "$OPT" "$ETC" "$UNIT_DIR"
run install -d -m 0750 "$STATE"
# 0700: loading a cached .cwasm runs its machine code, so only the service user may write there.
run install -d -m 0700 "$STATE/cache"
if [ -z "$DESTDIR" ]; then
    run chown "$USER_NAME:$USER_NAME" "$STATE" "$STATE/cache"
fi

# 3. the virtualenv and the package (pip upgrades it in place on a re-run)
if [ "$NO_VENV" = 0 ]; then
    [ -x "$OPT/venv/bin/python" ] || run "$PYTHON" -m venv "$OPT/venv"
    run "$OPT/venv/bin/python" -m pip install --quiet --upgrade pip
    run "$OPT/venv/bin/python" -m pip install --quiet --upgrade "$SRC"
fi
run install -m 0644 "$SRC/README.md" "$OPT/README.md"
run install -d -m 0755 "$OPT/examples"
run install -m 0644 "$SRC/tradebotd/examples/sma_crossover.js" "$OPT/examples/sma_crossover.js"

# 4. configuration and secrets
sed -e 's|^path = "tradebotd.db"|path = "/var/lib/tradebotd/tradebotd.db"|' "$SRC/config.example.toml" \
    | write_once "$ETC/config.toml" 0644
write_once "$ETC/tradebotd.env" 0600 <<'EOF'
# Secrets for tradebotd, read by systemd (EnvironmentFile=) as root before it drops privileges.
# Keep this file mode 0600, owned by root. One KEY=value per line, no quotes needed.
#
# The web app's manual trigger (POST /api/cron/strategies): Authorization: Bearer <CRON_SECRET>.
# CRON_SECRET=
# Live trading keys (environment only, never in config.toml):
# TRADEBOTD_EXCHANGE__API_KEY=
# TRADEBOTD_EXCHANGE__API_SECRET=
EOF
if [ "$DRY_RUN" = 0 ] && [ -e "$ETC/tradebotd.env" ]; then
    chmod 0600 "$ETC/tradebotd.env"  # whatever happened to it since, secrets stay private
    [ -n "$DESTDIR" ] || chown root:root "$ETC/tradebotd.env"
fi

# 5. the unit
run install -m 0644 "$SRC/systemd/tradebotd.service" "$UNIT_DIR/tradebotd.service"

if [ -n "$DESTDIR" ]; then
    echo "staged under $DESTDIR (no user, no systemctl)"
    exit 0
fi

# 6. the store and the sandbox cache, as the service user with the service's paths
as_service() {
    # from the state directory: the service user may not be able to read the caller's
    (cd /var/lib/tradebotd 2> /dev/null || cd /; run runuser -u "$USER_NAME" -- env \
        TRADEBOTD_CONFIG=/etc/tradebotd/config.toml TRADEBOTD_CACHE_DIR=/var/lib/tradebotd/cache "$@")
}
if [ "$NO_VENV" = 0 ]; then
    as_service /opt/tradebotd/venv/bin/tradebotd db init
    # loads the example exactly as the daemon would: a smoke test, and it compiles the sandbox
    # into the cache so the first start does not
    as_service /opt/tradebotd/venv/bin/tradebotd strategy check \
        /opt/tradebotd/examples/sma_crossover.js --param fast=5 --param slow=20
fi

# 7. systemd
if [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
    run systemctl enable tradebotd.service
    if [ "$START" = 1 ]; then
        run systemctl restart tradebotd.service
    fi
    echo "installed. Put secrets in /etc/tradebotd/tradebotd.env, then: systemctl start tradebotd"
    echo "logs: journalctl -u tradebotd -f -o cat | jq"
else
    echo "systemd is not running here: unit installed, not enabled"
fi
