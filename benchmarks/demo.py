"""The README's demo table: `cnnzip demo` (scikit-learn digits, seed 0), recorded with the machine it ran on.

    python benchmarks/demo.py            # writes results/demo.json
"""

import json
import subprocess
import sys

from _common import RUNS, save


def main() -> None:
    out = RUNS / "demo"
    proc = subprocess.run([sys.executable, "-m", "cnnzip.cli", "demo", "--out", str(out), "--overwrite", "--quiet"],
                          capture_output=True, text=True, check=True)
    print(proc.stdout)
    result = json.loads((out / "result.json").read_text())
    save("demo", {"table": proc.stdout.splitlines()[:5], "rows": result["rows"], "ratios": result["ratios"],
                  "checks": result["search"]["cost"]["checks"], "seed": 0, "data": "scikit-learn digits"})


if __name__ == "__main__":
    main()
