"""08 Comparing optimizers: jdl.compare, the table and the plots."""

# ruff: noqa: E501 - markdown tables and formulas are easier to read unwrapped

from src.common import code, md, setup

CELLS = [
    md(r"""
    # 8. Comparing optimizers

    Which optimizer is best? Only a careful experiment can say, and a careless one says whatever its setup
    favours. A fair comparison fixes the **model, data and budget**, gives every optimizer **its own tuned
    learning rate**, repeats each run over several **seeds** (initialisation and data order), and reports the
    spread, not one lucky run:

    $$\text{score}(o) = \frac{1}{S}\sum_{s=1}^{S} \text{acc}_{\text{test}}\big(\theta^{(o, s)}_{T}(\eta^*_o)\big)
    \pm \text{std}, \qquad \eta^*_o = \arg\max_{\eta \in \text{grid}} \text{acc}_{\text{val}}\big(\theta^{(o)}_T(\eta)\big),$$

    with the learning rate chosen on a **validation split** held out from the training data, never on the
    test set. That is the protocol of DeepOBS (Schneider, Balles & Hennig, 2019), which `jdl.compare.run`
    follows. It also reports how many epochs and seconds each optimizer needs to reach a target accuracy.

    `jdl.compare.run` trains all runs of an optimizer (seeds $\times$ learning rates) and all optimizers
    sharing a batch size at once, `jax.vmap`ped into one compiled program with the data on the device. That
    is what makes the comparison of the eight classic optimizers on `mnist_sample` (in `jdl compare`'s
    defaults: ten epochs, two seeds) take about ten seconds on two CPU cores. The same job from the command line: `jdl compare --out DIR`.

    Sources: Schneider, Balles & Hennig, "DeepOBS: a deep learning optimizer benchmark suite" (ICLR, 2019);
    Schmidt, Schneider & Hennig, "Descending through a crowded valley: benchmarking deep learning optimizers"
    (ICML, 2021); Wilson et al., "The marginal value of adaptive gradient methods in machine learning"
    (NeurIPS, 2017); Choi et al., "On empirical comparisons of optimizers for deep learning"
    (arXiv:1910.05446, 2019); Ruder (arXiv:1609.04747, 2016).
    """),
    setup("""
    SEEDS = {"full": 5, "small": 3, "quick": 2}[SIZE]
    EPOCHS = {"full": 20, "small": 8, "quick": 3}[SIZE]
    GRID = {"full": [0.1, 0.3, 1.0, 3.0, 10.0], "small": [0.1, 1.0, 10.0], "quick": [0.3, 1.0, 3.0]}[SIZE]
    """),
    code(r"""
    import json
    import tempfile
    from pathlib import Path

    import matplotlib.pyplot as plt
    import numpy as np
    from IPython.display import Image, display

    import jdl.compare

    OUT = Path(tempfile.mkdtemp(prefix="jdl-compare-"))  # results go to a temporary folder, not the repository
    print("results in", OUT)
    """),
    md(r"""
    ## The eight classic optimizers

    `jdl.compare.CLASSIC` names them; each preset fixes how it is fed and its default learning rate. `gd` sees
    the whole training set per step, `sgd` one example, the others batches of 128.
    """),
    code(r"""
    for name in jdl.compare.CLASSIC:
        p = jdl.compare.preset(name)
        batch = {-1: "all", None: "128"}.get(p.batch_size, str(p.batch_size))
        print(f"{name:10s} learning rate {p.learning_rate:<6g} batch {batch}")
    """),
    code(r"""
    result = jdl.compare.run("mnist_sample", "mlp", jdl.compare.CLASSIC, seeds=SEEDS, epochs=EPOCHS, progress=False)
    print(result.table())
    """),
    md(r"""
    The table: final test accuracy as mean ± standard deviation over the seeds, epochs and seconds to the
    target accuracy (90% by default) where every seed reached it ("1/2 runs": only one of two seeds did),
    training time, and how many runs diverged (a run whose loss becomes `nan` or infinite is stopped and
    reported, the others go on). The times are those of each batch size's group: the six mini-batch
    optimizers train together, so their "train s" is the whole group's.

    `result.plot(dir)` draws the training loss and test accuracy per epoch (mean with a ±std band) as PNG
    files; `result.save(dir)` writes `results.json`.
    """),
    code(r"""
    result.save(OUT)
    for path in result.plot(OUT):
        display(Image(filename=str(path)))
    """),
    md(r"""
    The same curves against **wall-clock time**, drawn directly from `result.runs` (one dict per run, as in
    `results.json`). Per epoch, full-batch `gd` makes one step and stochastic `sgd` thousands; time is the
    fairer axis when steps cost different amounts. Runs of one batch size train together and each epoch's
    time is the group's, so the plot charges every run its share: the group's time divided by its runs.
    """),
    code(r"""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(14, 4.5))
    names = list(dict.fromkeys(r["optimizer"] for r in result.runs))
    finals = []
    for name in names:
        runs = [r for r in result.runs if r["optimizer"] == name and r["epochs"]]
        length = min(len(r["epochs"]) for r in runs)
        group = sum(r["batch_size"] == runs[0]["batch_size"] for r in result.runs)  # runs trained together
        seconds = np.mean([np.cumsum([e["time_s"] / group for e in r["epochs"][:length]]) for r in runs],
                          axis=0)
        accuracy = np.mean([[e["test_accuracy"] for e in r["epochs"][:length]] for r in runs], axis=0)
        ax0.plot(seconds, accuracy, marker="o", ms=3, label=name)
        finals.append([r["epochs"][-1]["test_accuracy"] for r in runs if not r["diverged"]])
    ax0.set_xlabel("training time (s; a group's time divided by its runs)")
    ax0.set_ylabel("test accuracy")
    ax0.legend(ncol=2, fontsize=8)
    ax0.grid(alpha=0.3)
    order = np.argsort([np.mean(f) for f in finals])
    for rank, k in enumerate(order):
        spread = np.std(finals[k], ddof=1) if len(finals[k]) > 1 else 0.0
        ax1.errorbar(np.mean(finals[k]), rank, xerr=spread, fmt="o", capsize=4, color=f"C{k}")
        ax1.plot(finals[k], [rank] * len(finals[k]), "k.", ms=4, alpha=0.5)
    ax1.set_yticks(range(len(names)), [names[k] for k in order])
    ax1.set_xlabel(f"final test accuracy (mean ± sample std over {SEEDS} seeds; dots: single runs)")
    ax1.grid(alpha=0.3)
    plt.show()
    """),
    md(r"""
    ## Tuning the learning rate (DeepOBS protocol)

    The defaults above are reasonable, not optimal, and a comparison at untuned rates ranks the rates, not the
    optimizers. With `learning_rates`, each optimizer trains a grid on 90% of the training split, the rate
    with the best final **validation** accuracy on the other 10% is kept, and that rate is rerun with every
    seed on the whole training split and reported on the test split. Here each grid is the preset's rate
    times a few factors.
    """),
    code(r"""
    grids = {name: [jdl.compare.preset(name).learning_rate * f for f in GRID] for name in jdl.compare.CLASSIC}
    tuned = jdl.compare.run("mnist_sample", "mlp", jdl.compare.CLASSIC, seeds=SEEDS, epochs=EPOCHS,
                            learning_rates=grids, progress=False)
    print(tuned.table())
    tuned_dir = OUT / "tuned"
    tuned_dir.mkdir()
    tuned.save(tuned_dir)
    paths = tuned.plot(tuned_dir)
    display(Image(filename=str(tuned_dir / "lr_sensitivity.png")))
    """),
    md(r"""
    The sensitivity plot shows the validation accuracy of every rate in each grid: a flat curve means an
    optimizer is forgiving, a peaked one that it must be tuned. A best rate at the edge of the grid, with the
    curve still rising there, means the grid is too narrow: widen it before trusting the ranking. Compare the
    two tables: tuning can change the ranking.
    """),
    code(r"""
    before = {n: np.mean([r["epochs"][-1]["test_accuracy"] for r in result.runs if r["optimizer"] == n])
              for n in names}
    after = {n: np.mean([r["epochs"][-1]["test_accuracy"] for r in tuned.runs
                         if r["optimizer"] == n and r["epochs"] and not r["diverged"]]) for n in names}
    chosen = {r["optimizer"]: r["learning_rate"] for r in tuned.runs}
    x = np.arange(len(names))
    plt.figure(figsize=(11, 4))
    plt.bar(x - 0.2, [before[n] for n in names], 0.4, label="preset learning rate")
    plt.bar(x + 0.2, [after[n] for n in names], 0.4, label="tuned learning rate")
    plt.xticks(x, [f"{n}\n(lr {chosen[n]:.3g})" for n in names], fontsize=8)
    low = min(min(before.values()), min(after.values()))
    plt.ylim(max(0.0, low - 0.05), 1.0)
    plt.ylabel("final test accuracy")
    plt.legend()
    plt.grid(alpha=0.3, axis="y")
    plt.show()

    saved = json.loads((tuned_dir / "results.json").read_text())
    print("results.json keys:", sorted(saved))
    print("one run:", {k: v for k, v in saved["runs"][0].items() if k != "epochs"},
          "with", len(saved["runs"][0]["epochs"]), "epoch records like", saved["runs"][0]["epochs"][-1])
    """),
    md(r"""
    ## Takeaway

    * Compare optimizers at their own tuned learning rates, over several seeds, with the rate chosen on
      validation data; report mean and spread.
    * On this small problem the adaptive methods (RMSProp, Adam, AdaDelta) do well at their default rates, as
      does `sgd` with one example a step (many more steps per epoch), and tuning raises the optimizers whose
      best rate is not their default (compare the two tables), so a ranking at default rates says little.
      With longer training and wider grids tuned SGD and momentum often close the gap (Wilson et al., 2017;
      Schmidt et al., 2021): no optimizer dominates everywhere, and tuning matters as much as the choice.
    * Full-batch GD is cheap per epoch but makes one step per epoch, so it learns least per second.
    * `jdl.compare.run` (or `jdl compare` on the command line) runs the whole protocol as one vmapped program
      and gives the table, `results.json` and the plots.
    """),
    md(r"""
    ## Exercises

    1. Take an optimizer whose best rate was at the edge of its grid and search a wider one, e.g.
       `learning_rates={"adam": [1e-3, 3e-3, 1e-2, 3e-2], ...}`. Does its tuned accuracy, or its rank, change?
    2. Add `"nesterov"`, `"lion"` and `"optax.lamb"` to the optimizers compared.
    3. Rerun with `seeds=5`. Which differences in the table are larger than the spread over seeds?
    """),
]
