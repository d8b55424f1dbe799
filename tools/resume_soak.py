"""Kill-and-resume soak: N SIGKILLs at random points of a real GReg+ training process, then compare with an
uninterrupted run (weights bit-identical, one MLflow run with contiguous steps, identical CSV curve).

    .venv/bin/python tools/resume_soak.py --kills 10 [--seed 7]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_resume import kill_resume_compare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        # enough steps (a checkpoint every 3) for every kill to land after a fresh checkpoint
        res = kill_resume_compare(Path(d), args.kills, seed=args.seed,
                                  driver_args=("--epochs", str(max(2, args.kills // 3 + 2))))
    res["seconds"] = round(time.time() - t0, 1)
    ok = res["kills"] >= args.kills and not res["weights_differ"] and not res["curves_differ"] \
        and res["mlflow_runs"] == 1 and res["csv_identical"]
    res["identical"] = ok
    print(json.dumps(res, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
