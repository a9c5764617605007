"""Print the tables of README.md from diag.jsonl and act_stats.json (``python summarize.py``)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    rows = [json.loads(line) for line in (HERE / "diag.jsonl").read_text().splitlines() if line.strip()]
    last = {}
    for r in rows:  # the latest run of each (group, label, n_eval)
        last[(r["group"], r["label"], r["n_eval"])] = r
    for group in ("split", "recipes", "gptq", "atypes", "types"):
        sel = [r for (g, _, _), r in last.items() if g == group]
        if not sel:
            continue
        print(f"\n{group} (n_eval {sel[0]['n_eval']})")
        print(f"{'configuration':<56} {'cosine':>9} {'1 - cos':>9}")
        for r in sel:
            print(f"{r['label']:<56} {r['cosine']:>9.6f} {r['one_minus_cos']:>9.6f}")
    layers = [r for (g, _, _), r in last.items() if g == "layers"]
    if layers:
        by_type: dict[str, list[float]] = defaultdict(list)
        n_eval = layers[0]["n_eval"]
        print(f"\nper layer, W+A E4M3 tensor/max on that layer only (n_eval {n_eval}): 1 - cos x 1e6")
        grid: dict[str, dict[str, float]] = defaultdict(dict)
        for r in layers:
            name = r["label"].split(" only ")[1]
            m = re.match(r"encoder\.layer\.(\d+)\.(.*)", name)
            kind = {"attention.self.query": "query", "attention.self.key": "key",
                    "attention.self.value": "value", "attention.output.dense": "attn_out",
                    "intermediate.dense": "ffn_in", "output.dense": "ffn_out"}[m.group(2)]  # fmt: skip
            grid[m.group(1)][kind] = r["one_minus_cos"] * 1e6
            by_type[kind].append(r["one_minus_cos"])
        kinds = ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
        print("layer " + "".join(f"{k:>10}" for k in kinds))
        for layer in sorted(grid):
            print(f"{layer:>5} " + "".join(f"{grid[layer].get(k, float('nan')):>10.1f}" for k in kinds))
        print("sum   " + "".join(f"{1e6 * sum(by_type[k]):>10.1f}" for k in kinds))
        total = sum(sum(v) for v in by_type.values())
        print(f"sum over all {len(layers)} layers: {total:.6f}")
    stats_path = HERE / "act_stats.json"
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        print("\nE4M3 SQNR (dB) of each linear's input (calibration tokens) and weight")
        print(f"{'layer':<42}{'amax':>7}{'rms':>7}{'subn%':>7}{'A max':>7}{'A mse':>7}{'A p9999':>8}"
              f"{'A tok':>7}{'W ten':>7}{'W ch':>7}{'W chmse':>8}")  # fmt: skip
        for s in stats:
            print(f"{s['layer'].replace('encoder.layer.', ''):<42}{s['amax']:>7.2f}{s['rms']:>7.3f}"
                  f"{100 * s['frac_subnormal']:>7.2f}{s['sqnr_max']:>7.1f}{s['sqnr_mse']:>7.1f}"
                  f"{s['sqnr_pct99.99']:>8.1f}{s['sqnr_token']:>7.1f}{s['w_sqnr_tensor']:>7.1f}"
                  f"{s['w_sqnr_channel']:>7.1f}{s['w_sqnr_channel-mse']:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
