"""Figures and tables from logs (never from training): what the notebooks and the book show."""
from __future__ import annotations


def show_run(log: dict) -> None:
    """Print one run's outcome and plot its dev metric and training loss against steps."""
    import matplotlib.pyplot as plt

    if log["status"] != "ok":
        print(f"{log['run_id']}: FAILED: {log['reason']}")
        return
    m = log["task"]["main_metric"]
    base = log["task"]["majority_baseline"].get(m)
    print(f"{log['run_id']}: final {m} = {log['final'][m]:.4f}, best {log['best'][m]:.4f} at step "
          f"{log['best']['step']}, majority baseline {base if base is None else round(base, 4)}; "
          f"{log['params']['trainable']:,} trainable parameters; {log['wall_time_s']:.0f} s")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    loss = log["history"]["train_loss"]
    ax1.plot(range(1, len(loss) + 1), loss, lw=0.6)
    ax1.set(xlabel="step", ylabel="train loss", title="training loss")
    ev = log["history"]["evals"]
    ax2.plot([e["step"] for e in ev], [e[m] for e in ev], marker="o", ms=3)
    if base is not None:
        ax2.axhline(base, ls="--", c="grey", lw=0.8, label="majority class")
        ax2.legend()
    ax2.set(xlabel="step", ylabel=f"dev {m}", title=f"{log['config']['task']} / {log['config']['method']}")
    fig.tight_layout()
    plt.show()
