"""The pretraining curve: CER on the validation pages against training examples seen, from a run's log.

    python scripts/training_curve.py runs/pretrain-tiny docs/pretrain-curve.png

Reads the evaluations in ``trainer_state.json`` of the run's newest checkpoint (or ``train_result.json`` of a
finished run); examples seen = step x batch size x gradient accumulation (x processes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load_points(run: Path) -> tuple[list[tuple[int, float, float]], dict]:
    """[(examples seen, eval CER, train loss near that step)], and the run's settings (with ``losses``: every
    logged (examples seen, train loss))."""
    finished = run / "train_result.json"
    if finished.is_file():
        history = json.loads(finished.read_text())["log_history"]
    else:
        ckpts = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not ckpts:
            raise SystemExit(f"{run}: no checkpoint-* or train_result.json with a log history")
        history = json.loads((ckpts[-1] / "trainer_state.json").read_text())["log_history"]
    info = json.loads((run / "run.json").read_text())
    sft = info["sft"]
    per_step = sft.get("per_device_train_batch_size", 8) * sft.get("gradient_accumulation_steps", 1)
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    points = []
    for h in history:
        if "eval_cer" in h:
            near = min(losses, key=lambda s: abs(s - h["step"])) if losses else None
            points.append((h["step"] * per_step, h["eval_cer"], losses.get(near, float("nan"))))
    info["losses"] = [(step * per_step, loss) for step, loss in sorted(losses.items())]
    return points, info


def plot(run: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, info = load_points(run)
    if not points:
        raise SystemExit(f"{run}: no evaluations logged yet (eval.steps)")
    seen, cer, _ = zip(*points)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(seen, [100 * c for c in cer], marker="o", color="tab:blue", label="validation CER (greedy, full pages)")
    ax.set_xlabel("training examples seen (pages and bands)")
    ax.set_ylabel("CER %")
    ax.set_ylim(bottom=0)
    ax.axhline(2, color="tab:green", linestyle="--", linewidth=1, label="target: CER 2%")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(*zip(*info["losses"]), color="tab:orange", alpha=0.6, label="train loss (logged every 10 steps)")
    ax2.set_ylabel("train loss")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="lower left", fontsize=8)
    n_eval = info.get("num_eval_samples", "?")
    ax.set_title(f"{run.name}: {info['config']['tiny']['image_size']} px, eval on {n_eval} validation pages",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(plot(Path(sys.argv[1]), Path(sys.argv[2])))
