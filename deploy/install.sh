#!/usr/bin/env bash
# Installs and starts dtma on a droplet (Ubuntu LTS or Debian): Docker, the .deb, the token,
# the settings, then the unit. deploy/cloud-init.yaml runs it at first boot; by hand:
#
#   sudo DTMA_BEARER_TOKEN=... bash install.sh --deb https://.../dtma_0.1.0-1_amd64.deb \
#       --api-base-url https://api.example.com
#
# Options (each also read from the environment variable named in brackets):
#   --deb PATH|URL          the package [DTMA_DEB]; omitted: keep the installed one
#   --api-base-url URL      the backend [AGENTOPIA_API_BASE_URL]
#   --agent-id NAME         name sent in hello [DTMA_AGENT_ID]; default: the host name
#   --listen ADDR           the local API's address [DTMA_LISTEN]; default 127.0.0.1:30000
#   --set KEY=VALUE         any other variable for /etc/dtma/dtma.env (repeatable)
#   --token-file FILE       read the agent's token from FILE instead of [DTMA_BEARER_TOKEN]
#   --backend-api-key-file FILE   the backend's key for the local API, instead of
#                           [BACKEND_TO_DTMA_API_KEY]; optional
#   --skip-docker           do not install Docker (already there, or not wanted)
#   --no-start              configure only: do not (re)start the unit
#
# What it writes: /etc/dtma/bearer_token and /etc/dtma/backend_api_key (mode 0640, root:dtma:
# members of the `dtma` group may run `dtma status` without sudo, and membership is
# root-equivalent), the given settings in /etc/dtma/dtma.env (other lines kept). It checks the
# result with `dtma check-config` before starting anything, and puts dtma.env back as it was
# when the check fails. Rerunning it is safe: it rewrites what it is given and restarts the agent.
set -euo pipefail
umask 022

die() {
  echo "install.sh: $*" >&2
  exit 1
}
say() { echo "install.sh: $*" >&2; }

deb=${DTMA_DEB:-}
token_file=
key_file=
skip_docker=false
start=true
settings=()
[ -n "${AGENTOPIA_API_BASE_URL:-}" ] && settings+=("AGENTOPIA_API_BASE_URL=$AGENTOPIA_API_BASE_URL")
[ -n "${DTMA_AGENT_ID:-}" ] && settings+=("DTMA_AGENT_ID=$DTMA_AGENT_ID")
[ -n "${DTMA_LISTEN:-}" ] && settings+=("DTMA_LISTEN=$DTMA_LISTEN")

while [ $# -gt 0 ]; do
  case $1 in
    --deb) deb=${2:?--deb needs a path or URL}; shift ;;
    --api-base-url) settings+=("AGENTOPIA_API_BASE_URL=${2:?--api-base-url needs a URL}"); shift ;;
    --agent-id) settings+=("DTMA_AGENT_ID=${2:?--agent-id needs a name}"); shift ;;
    --listen) settings+=("DTMA_LISTEN=${2:?--listen needs an address}"); shift ;;
    --set) settings+=("${2:?--set needs KEY=VALUE}"); shift ;;
    --token-file) token_file=${2:?--token-file needs a file}; shift ;;
    --backend-api-key-file) key_file=${2:?--backend-api-key-file needs a file}; shift ;;
    --skip-docker) skip_docker=true ;;
    --no-start) start=false ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (--help lists them)" ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || die "run it as root"
for kv in ${settings[@]+"${settings[@]}"}; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*=[^[:cntrl:]]*$ ]] || die "not a KEY=VALUE setting on one line: $kv"
done

token=${DTMA_BEARER_TOKEN:-}
if [ -n "$token_file" ]; then
  token=$(cat "$token_file") || die "cannot read $token_file"
fi
key=${BACKEND_TO_DTMA_API_KEY:-}
if [ -n "$key_file" ]; then
  key=$(cat "$key_file") || die "cannot read $key_file"
fi
# Unset now: nothing started below (apt, dpkg, the agent's check) inherits them.
unset DTMA_BEARER_TOKEN BACKEND_TO_DTMA_API_KEY

apt_get() {
  DEBIAN_FRONTEND=noninteractive apt-get -y -q \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# -- Docker: Ubuntu's and Debian's own package ------------------------------------------------
if ! $skip_docker; then
  if ! command -v docker >/dev/null; then
    say "installing Docker (docker.io)"
    apt_get update
    apt_get install docker.io
  fi
  if [ -d /run/systemd/system ]; then
    systemctl enable --now docker.service
  fi
fi

# -- The package ------------------------------------------------------------------------------
if [ -n "$deb" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  case $deb in
    http://* | https://*)
      command -v curl >/dev/null || apt_get install curl
      say "downloading $deb"
      curl -fsSL --retry 5 -o "$work/dtma.deb" "$deb" || die "cannot download $deb"
      ;;
    *)
      [ -f "$deb" ] || die "$deb: no such file"
      cp "$deb" "$work/dtma.deb"
      ;;
  esac
  # apt resolves the dependencies; confold keeps a locally edited configuration on upgrade.
  chmod 0644 "$work/dtma.deb"
  chmod 0755 "$work"
  # shellcheck disable=SC2016 # dpkg's format, not the shell's
  say "installing $(dpkg-deb --show --showformat '${Package} ${Version}' "$work/dtma.deb")"
  apt_get install "$work/dtma.deb" >&2
fi
if ! command -v dtma >/dev/null || ! getent group dtma >/dev/null; then
  die "dtma is not installed: give --deb PATH|URL"
fi

# -- Secrets: written beside their final name, then renamed (never half-written) --------------
write_secret() {
  local path=$1 value=$2 tmp
  tmp=$(mktemp "$path.XXXXXX")
  chgrp dtma "$tmp"
  chmod 0640 "$tmp"
  printf '%s\n' "$value" >"$tmp"
  mv -f "$tmp" "$path"
}
if [ -n "$token" ]; then
  write_secret /etc/dtma/bearer_token "$token"
  say "wrote /etc/dtma/bearer_token"
elif [ ! -s /etc/dtma/bearer_token ]; then
  die "no token: set DTMA_BEARER_TOKEN or give --token-file (and /etc/dtma/bearer_token is empty)"
fi
if [ -n "$key" ]; then
  write_secret /etc/dtma/backend_api_key "$key"
  settings+=("BACKEND_TO_DTMA_API_KEY_FILE=/etc/dtma/backend_api_key")
  say "wrote /etc/dtma/backend_api_key"
fi
unset token key

# -- Settings: each KEY=VALUE replaces the first line setting KEY (or its commented example),
# other lines setting KEY are dropped, a new KEY is appended. The file keeps its owner and mode.
env_file=/etc/dtma/dtma.env
before=$(cat "$env_file")
for kv in ${settings[@]+"${settings[@]}"}; do
  name=${kv%%=*}
  updated=$(awk -v name="$name" -v line="$kv" '
    function key(s) { sub(/^[ \t]*(export[ \t]+)?/, "", s); return s }
    NR == FNR { if ($0 !~ /^[ \t]*#/ && index(key($0), name "=") == 1) active = 1; next }
    {
      s = $0
      commented = (s ~ /^[ \t]*#/)
      if (commented) sub(/^[ \t]*#[ \t]*/, "", s)
      if (index(key(s), name "=") == 1) {
        if (!commented) { if (!done) print line; done = 1; next }
        if (!active && !done) { print line; done = 1; next }
      }
      print
    }
    END { if (!done) print line }
  ' "$env_file" "$env_file")
  printf '%s\n' "$updated" >"$env_file"
  say "set ${name} in $env_file"
done

# -- Check, then start --------------------------------------------------------------------------
# The agent's own validation, reading what the unit will give it.
if ! problems=$(
  set -a
  # shellcheck disable=SC1090
  . "$env_file"
  set +a
  DTMA_BEARER_TOKEN_FILE=/etc/dtma/bearer_token dtma check-config 2>&1 >/dev/null
); then
  # The file as it was: a rejected setting is not left for the next start to trip on.
  printf '%s\n' "$before" >"$env_file"
  die "the configuration has problems ($env_file is left as it was; fix the options or
/etc/dtma/config.toml, then rerun):
$problems"
fi

if $start; then
  systemctl daemon-reload
  systemctl enable dtma.service
  systemctl restart dtma.service
  say "started: systemctl status dtma, dtma status"
else
  say "configured, not started (--no-start): systemctl start dtma"
fi
