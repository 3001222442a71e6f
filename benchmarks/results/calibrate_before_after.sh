#!/bin/bash
# ATM calibration to a budget, cold (empty cache, compile cache off): the tree before this change vs main.
for tree in /tmp/old-tree /work/main; do
  c=$(mktemp -d)
  s=$(date +%s.%N)
  (cd $tree && FASTVIT_CACHE=$c PYTHONPATH=$tree /work/main/.venv/bin/python -m fastvit_jax plan --method atm \
     --calibrate /work/shared/data/imagenet-samples --calibration-images 64 --target-gflops 0.7352 --compile-cache off \
     --out $c/atm.json > $c/out.txt 2>&1)
  e=$(date +%s.%N)
  echo "$tree $(python3 -c "print(round($e-$s,1))") s $(python3 -c "import json; print(json.load(open('$c/atm.json'))['options']['r_list'])" 2>&1 | tail -1)" >> /tmp/cal.txt
done
echo done > /tmp/cal.done
