#!/bin/sh
# Usage: tools/opa/build.sh OUTPUT   Build OPA at the version go.mod pins into OUTPUT.
#
# Static (CGO_ENABLED=0), reproducible paths (-trimpath), no VCS stamp (-buildvcs=false:
# otherwise Go stamps this repository's commit into OPA's version output), and go.sum
# must already hold every module (-mod=readonly: nothing is resolved anew, every download
# is checked against go.sum and the checksum database).
set -eu
out=$(realpath -m "${1:?usage: tools/opa/build.sh OUTPUT}")
cd "$(dirname "$0")"
if ! command -v go >/dev/null 2>&1; then
  echo "tools/opa/build.sh: Go is not installed, so OPA cannot be built." >&2
  exit 3
fi
want=$(sed -n 's/^require github.com\/open-policy-agent\/opa v\(.*\)$/\1/p' go.mod)
CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -buildvcs=false -trimpath -ldflags "-s -w" \
  -o "$out.tmp" .
got=$("$out.tmp" version | sed -n 's/^Version: //p')
if [ "$got" != "$want" ]; then
  echo "tools/opa/build.sh: built OPA says version '$got', go.mod pins '$want'" >&2
  rm -f "$out.tmp"
  exit 1
fi
mv "$out.tmp" "$out"
echo "built $out: OPA $got"
