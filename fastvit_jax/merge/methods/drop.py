"""Drop instead of merge (the paper's ablation): each block removes the r tokens whose feature
has the lowest norm. Kernels: merge/metrics.py (gather) and merge/onehot.py (dense)."""

METHOD = {"name": "drop", "summary": "drop the r tokens of lowest feature norm per block (ablation)", "kind": "drop"}
