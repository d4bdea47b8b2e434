#!/usr/bin/env bash
# Make a secure Zenoh profile for qail_ros: a test CA, a certificate per identity, the router
# configuration (mutual TLS + access control) and one session configuration per identity.
#
#   scripts/make_secure_profile.sh DIR [--port 7447] [--policy vla_policy] [NAME ...]
#
# DIR gets ca.pem/ca.key, router.pem/key, NAME.pem/key and NAME.json5 for every NAME
# (default: vla_policy camera_source power_monitor launcher operator), and router.json5.
# The certificate's common name is the identity the router's access rules see: the --policy
# names (default vla_policy) may publish cmd_twist, the other names may not, a name not listed
# here gets nothing. Then:
#
#   qail-ros launch orin_vla --secure DIR          # router + nodes on mutual TLS + ACL
#   ZENOH_SESSION_CONFIG_URI=DIR/operator.json5 qail-ros topic list
#
# The CA key stays in DIR: this is a TEST CA. For a robot, keep the CA key offline, give each
# machine only its own key, and see docs/security.md. Needs openssl.
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

[ $# -ge 1 ] || usage 2
case "$1" in -h|--help) usage 0 ;; esac
DIR=$1; shift
PORT=7447
POLICY=vla_policy
NAMES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT=$2; shift 2 ;;
        --policy) POLICY=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        -*) echo "unknown option $1" >&2; usage 2 ;;
        *) NAMES+=("$1"); shift ;;
    esac
done
[ ${#NAMES[@]} -gt 0 ] || NAMES=(vla_policy camera_source power_monitor launcher operator)
command -v openssl >/dev/null || { echo 'openssl is needed (apt-get install openssl)' >&2; exit 1; }

HERE=$(cd "$(dirname "$0")/.." && pwd)
TEMPLATES=${QAIL_ROS_SECURE_TEMPLATES:-$HERE/config/secure}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
umask 077
DAYS=365

if [ ! -f "$DIR/ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$DAYS" \
        -subj '/CN=qail_ros test CA' -keyout "$DIR/ca.key" -out "$DIR/ca.pem" \
        -addext 'basicConstraints=critical,CA:TRUE' \
        -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
fi

cert() {  # cert NAME SERVER(0|1)
    local name=$1 server=$2 ext
    ext="$DIR/$name.ext"
    {
        echo 'basicConstraints=CA:FALSE'
        echo 'keyUsage=critical,digitalSignature,keyEncipherment'
        if [ "$server" = 1 ]; then
            echo 'extendedKeyUsage=serverAuth,clientAuth'
            echo 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1'
        else
            echo 'extendedKeyUsage=clientAuth'
            echo "subjectAltName=DNS:$name"
        fi
    } > "$ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=$name" -keyout "$DIR/$name.key" -out "$DIR/$name.csr" 2>/dev/null
    openssl x509 -req -in "$DIR/$name.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
        -CAcreateserial -days "$DAYS" -extfile "$ext" -out "$DIR/$name.pem" 2>/dev/null
    rm -f "$DIR/$name.csr" "$ext"
}

quoted() { local out='' n; for n in "$@"; do out="$out${out:+, }\"$n\""; done; echo "$out"; }

cert router 1
OTHERS=()
for name in "${NAMES[@]}"; do
    cert "$name" 0
    [ "$name" = "$POLICY" ] || OTHERS+=("$name")
    sed -e "s|@DIR@|$DIR|g" -e "s|@PORT@|$PORT|g" -e "s|@NAME@|$name|g" \
        "$TEMPLATES/session.json5" > "$DIR/$name.json5"
done
sed -e "s|@DIR@|$DIR|g" -e "s|@PORT@|$PORT|g" \
    -e "s|@POLICY_CNS@|$(quoted "$POLICY")|" -e "s|@NODE_CNS@|$(quoted "${OTHERS[@]}")|" \
    "$TEMPLATES/router.json5" > "$DIR/router.json5"
chmod 644 "$DIR"/*.pem "$DIR"/*.json5
echo "secure profile in $DIR: router on tls/localhost:$PORT, identities ${NAMES[*]}" \
     "($POLICY may publish cmd_twist)"
