#!/bin/bash
# Re-split the gpu-kit's parts so that each fits one device call next to this repository.
#
# ../shared/gpu-kit/build.sh writes .gpu-kit/p00..p12 with chunks of ~58 MB. A call carries
# the working tree (tracked and untracked-not-ignored files) plus the carried part, 64 MiB
# in all, and with the repository at 7.2 MB a 58 MB part no longer fits (2026-11-26; at 15 MB
# in 2026-11-27 a 52 MB one no longer did either, hence 44). This
# joins each payload's chunks in order, cuts them into pieces that leave room for the
# repository, and writes .gpu-kit2/pNN with the same receive.sh and MANIFEST checksums (the
# payload bytes do not change; only the part counts do). Ship them as before:
#     carry [".gpu-kit2/pNN"]   command: bash .gpu-kit2/pNN/receive.sh
# Usage (project root): bash benchmarks/resplit_kit.sh [piece MB, default 44]
set -euo pipefail
SRC=.gpu-kit
DST=.gpu-kit2
MB=${1:-44}
[ -d $SRC/p00 ] || { echo "no $SRC: run ../shared/gpu-kit/build.sh first"; exit 1; }
grep -qx "/$DST/" .git/info/exclude || echo "/$DST/" >> .git/info/exclude
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
rm -rf $DST
n=0
for what in vllm model; do
  read -r _ _ sum < "$(ls $SRC/p*/MANIFEST-$what | head -1)"
  cat $(ls $SRC/p*/chunk-$what-* | sort) | split -b $((MB * 1000000)) -d -a 3 - "$TMP/chunk-$what-"
  pieces=$(ls "$TMP"/chunk-$what-* | wc -l)
  for c in $(ls "$TMP"/chunk-$what-* | sort); do
    d=$DST/p$(printf %02d $n)
    mkdir -p $d
    cp $SRC/p00/receive.sh $SRC/p00/env.sh $SRC/p00/gguf_to_hf.py $d/
    mv "$c" $d/
    echo "$what $pieces $sum" > $d/MANIFEST-$what
    n=$((n + 1))
  done
done
du -sh $DST/p* | sed 's/^/  /'
echo "$n parts in $DST; ship them in order"
