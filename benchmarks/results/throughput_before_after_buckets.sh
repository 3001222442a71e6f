#!/bin/bash
# Round-robin throughput: the tree before #37's buckets vs main, ViT-S and ViT-B, dense and ToMe r=16, batch 32.
out=/tmp/tput.jsonl; : > $out
for rep in 1 2 3; do
  for model in vit_small_patch16_224 vit_base_patch16_224; do
    for tree in /tmp/old-tree /work/main; do
      res=$(cd $tree && PYTHONPATH=$tree /work/main/.venv/bin/python -m fastvit_jax bench --model $model --method tome --r 16 --batch-size 32 --runs 10 --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"dense": d["dense"]["images_per_s"], "merged": d["merged"]["images_per_s"]}))')
      echo "{\"rep\": $rep, \"tree\": \"$tree\", \"model\": \"$model\", \"result\": $res}" >> $out
    done
  done
done
echo done > /tmp/tput.done
