"""03 Optimizers: the eight classic ones on test functions and on MNIST, and their agreement with optax."""

# ruff: noqa: E501 - markdown tables and formulas are easier to read unwrapped

from src.common import code, md, setup

CELLS = [
    md(r"""
    # 3. Optimizers: eight update rules

    Every optimizer here turns the gradient $g_t = \nabla L(\theta_t)$ (of a batch) into a step. With learning
    rate $\eta$, elementwise operations, and all accumulators starting at zero unless noted:

    | optimizer | update | source |
    |---|---|---|
    | GD (full-batch) | $\theta \leftarrow \theta - \eta\, \nabla L(\theta)$ on all $N$ examples | Cauchy 1847 |
    | SGD | the same, $g_t$ of one random example | Robbins & Monro 1951 |
    | mini-batch | the same, $g_t$ of a random batch of $B$ | e.g. Bottou et al. 2018 |
    | momentum | $m_t = \mu m_{t-1} + g_t$, $\ \theta \leftarrow \theta - \eta\, m_t$ | Polyak 1964 |
    | Adagrad | $s_t = s_{t-1} + g_t^2$ ($s_0 = 0.1$), $\ \theta \leftarrow \theta - \eta\, g_t / \sqrt{s_t + \epsilon}$ | Duchi, Hazan & Singer 2011 |
    | RMSProp | $v_t = \rho v_{t-1} + (1-\rho) g_t^2$, $\ \theta \leftarrow \theta - \eta\, g_t / \sqrt{v_t + \epsilon}$ | Tieleman & Hinton 2012 |
    | AdaDelta | $v_t = \rho v_{t-1} + (1-\rho) g_t^2$, $\ d_t = \frac{\sqrt{u_{t-1}+\epsilon}}{\sqrt{v_t+\epsilon}} g_t$, $\ u_t = \rho u_{t-1} + (1-\rho) d_t^2$, $\ \theta \leftarrow \theta - \eta\, d_t$ | Zeiler 2012 |
    | Adam | $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$, $\ \theta \leftarrow \theta - \eta \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}$ | Kingma & Ba 2015 |

    The rules are written as optax computes them, and jdl with it: Adagrad's sum starts at $s_0 = 0.1$ and its
    $\epsilon$ (like RMSProp's) sits inside the square root, where the papers start at 0 and add $\epsilon$
    outside. Default hyperparameters: $\mu = 0.9$; $\rho = 0.9$ for RMSProp and AdaDelta; $\beta_1 = 0.9$,
    $\beta_2 = 0.999$; $\epsilon = 10^{-8}$ for RMSProp and Adam, $10^{-7}$ for Adagrad, $10^{-6}$ for
    AdaDelta. "SGD" here means one example a step, as in Robbins and Monro; optax's `sgd` and jdl's
    `optim.sgd` are the update rule alone, fed whatever batch you give it (mini-batches, usually).

    Momentum remembers past gradients, so it accelerates along directions where they agree and damps the
    ones where they oscillate. Adagrad, RMSProp, AdaDelta and Adam divide by a running size of each
    coordinate's gradient: every parameter gets its own effective step size. Adam combines both.

    In jdl each is a `GradientTransformation(init, update)`, the same interface as optax, built from small
    pieces (`trace`, `scale_by_rss`, `scale_by_rms`, `scale_by_adadelta`, `scale_by_adam`,
    `scale_by_learning_rate`). Later refinements are built the same way: `adamw` (weight decay kept out of
    the moments), `nadam` (Adam with Nesterov's look-ahead), `amsgrad` (dividing by the largest second
    moment so far), `adamax` (the infinity norm instead of the RMS) and `lion` (the sign of a momentum: every
    coordinate moves by the learning rate); `optim.get(name)` builds any of them by name.

    Sources: Ruder, "An overview of gradient descent optimization algorithms" (arXiv:1609.04747, 2016);
    Goodfellow et al., *Deep Learning* (2016), §8.3 and §8.5; Polyak, "Some methods of speeding up the
    convergence of iteration methods" (1964); Duchi, Hazan & Singer, "Adaptive subgradient methods for online
    learning and stochastic optimization" (JMLR, 2011); Tieleman & Hinton, "Lecture 6.5 - RMSProp" (Coursera,
    2012); Zeiler, "ADADELTA: an adaptive learning rate method" (arXiv:1212.5701, 2012); Kingma & Ba, "Adam: a
    method for stochastic optimization" (ICLR, 2015).
    """),
    setup("""
    EPOCHS = {"full": 30, "small": 10, "quick": 3}[SIZE]  # epochs on MNIST
    SEEDS = {"full": 3, "small": 1, "quick": 1}[SIZE]
    """),
    code(r"""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax
    from jax import lax

    import jdl.compare
    import jdl.data
    from jdl import losses, models, optim
    """),
    md(r"""
    ## Two test functions

    * an **ill-conditioned quadratic**, $f(\theta) = \frac{1}{2}(u_1^2 + 20 u_2^2)$ with $u = R_{30°}\theta$: a
      narrow bowl whose axes are not aligned with the coordinates (condition number 20);
    * the **Rosenbrock** function, $f(x, y) = (1 - x)^2 + 100 (y - x^2)^2$: a curved valley with its minimum at
      $(1, 1)$ (Rosenbrock, *The Computer Journal*, 1960).

    A test function has no examples to sample, so we imitate the stochastic gradient of a batch of $B$
    examples by adding noise: $g_t = \nabla f(\theta_t) + \frac{\sigma}{\sqrt{B}}\xi_t$, $\xi_t \sim
    \mathcal{N}(0, I)$. GD gets the exact gradient, SGD $B = 1$, all the others $B = 16$, as they would
    on data.
    """),
    code(r"""
    ANGLE = np.pi / 6
    ROTATION = jnp.array([[np.cos(ANGLE), -np.sin(ANGLE)], [np.sin(ANGLE), np.cos(ANGLE)]], jnp.float32)


    def quadratic(p):
        u = ROTATION @ p
        return 0.5 * (u[0] ** 2 + 20 * u[1] ** 2)


    def rosenbrock(p):
        return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


    PROBLEMS = {  # function, start, minimum, steps, gradient noise sigma, plot window
        "quadratic": (quadratic, jnp.array([-4.0, 3.0]), (0.0, 0.0), 200, 4.0, ((-5, 5), (-4, 4))),
        "rosenbrock": (rosenbrock, jnp.array([-1.2, 1.0]), (1.0, 1.0), 1000, 10.0, ((-2, 2), (-1, 3))),
    }
    OPTIMIZERS = {  # name: (learning_rate -> GradientTransformation, batch size for the gradient noise)
        "gd": (optim.gd, None),
        "sgd": (optim.gd, 1),
        "minibatch": (optim.gd, 16),
        "momentum": (lambda lr: optim.momentum(lr, momentum=0.9), 16),
        "adagrad": (optim.adagrad, 16),
        "rmsprop": (optim.rmsprop, 16),
        "adadelta": (optim.adadelta, 16),
        "adam": (optim.adam, 16),
    }


    def trajectory(f, start, make, batch, learning_rate, steps, sigma, key):
        optimizer = make(learning_rate)

        def step(carry, key):
            params, opt_state = carry
            grads = jax.grad(f)(params)
            if batch is not None:
                grads = grads + sigma / np.sqrt(batch) * jax.random.normal(key, grads.shape)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optim.apply_updates(params, updates)
            return (params, opt_state), params

        _, path = lax.scan(step, (start, optimizer.init(start)), jax.random.split(key, steps))
        return jnp.concatenate([start[None], path])
    """),
    md(r"""
    ### A fair learning rate for each

    Comparing optimizers at one shared learning rate says more about the rate than the optimizer. So each
    optimizer gets the best rate of a grid of 25 from $10^{-4}$ to $10^{2}$: the one with the lowest loss over
    the last 10% of the steps. `jax.vmap` runs the whole grid as one program (the learning rate may be a
    traced value in jdl's optimizers).
    """),
    code(r"""
    GRID = np.logspace(-4, 2, 25).astype(np.float32)


    def best_rate(f, start, make, batch, steps, sigma):
        # Every rate of GRID at once; returns the best rate, its trajectory and its final loss.
        run = lambda lr: trajectory(f, start, make, batch, lr, steps, sigma, jax.random.key(0))
        paths = jax.jit(jax.vmap(run))(GRID)
        final = np.asarray(jnp.mean(jax.vmap(jax.vmap(f))(paths)[:, -steps // 10 :], axis=1))
        final = np.where(np.isfinite(final), final, np.inf)  # diverged runs lose
        i = int(np.argmin(final))
        return float(GRID[i]), np.asarray(paths[i]), float(final[i])


    best = {}
    for problem, (f, start, _, steps, sigma, _) in PROBLEMS.items():
        for name, (make, batch) in OPTIMIZERS.items():
            best[problem, name] = best_rate(f, start, make, batch, steps, sigma)
        print(problem + ": " + ", ".join(f"{n} lr={best[problem, n][0]:.2g}" for n in OPTIMIZERS))
    """),
    code(r"""
    for problem, (f, start, minimum, steps, _, (xlim, ylim)) in PROBLEMS.items():
        xs, ys = np.meshgrid(np.linspace(*xlim, 200), np.linspace(*ylim, 200))
        zs = np.asarray(jax.vmap(f)(jnp.stack([xs.ravel(), ys.ravel()], 1))).reshape(xs.shape)
        columns = -(-len(OPTIMIZERS) // 2)  # two rows, however many optimizers
        fig, axes = plt.subplots(2, columns, figsize=(3.25 * columns, 6.3), sharex=True, sharey=True, dpi=80)
        for ax in axes.flat[len(OPTIMIZERS):]:
            ax.axis("off")
        for ax, name in zip(axes.flat, OPTIMIZERS):
            lr, path, final = best[problem, name]
            ax.contour(xs, ys, zs, levels=np.logspace(-1.5, np.log10(zs.max()), 14), cmap="viridis", linewidths=0.7)
            ax.plot(path[:, 0], path[:, 1], "-", color="C3", lw=0.8)
            ax.plot(*np.asarray(start), "ko", ms=5)
            ax.plot(*minimum, "k*", ms=11)
            ax.set_xlim(xlim)
            ax.set_ylim(ylim)
            ax.set_title(f"{name} (lr {lr:.2g}): f = {final:.2g}", fontsize=10)
        for ax in axes[-1]:
            ax.set_xlabel(r"$\theta_1$")
        for ax in axes[:, 0]:
            ax.set_ylabel(r"$\theta_2$")
        fig.suptitle(f"{problem}: {steps} steps from the black dot; the star is the minimum")
        fig.tight_layout()
        plt.show()
    """),
    code(r"""
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    for ax, (problem, (f, *_rest)) in zip(axes, PROBLEMS.items()):
        for name in OPTIMIZERS:
            path = best[problem, name][1]
            ax.plot(np.asarray(jax.vmap(f)(jnp.asarray(path))), label=name, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("f")
        ax.set_title(problem)
        ax.grid(alpha=0.3)
    axes[1].legend(ncol=2, fontsize=8)
    plt.show()
    """),
    md(r"""
    What to see:

    * GD is the only one with the exact gradient: on the quadratic it converges to the minimum, while all the
      noisy ones stop at a noise floor set by $\sigma/\sqrt{B}$ and their rate (SGD, with $B = 1$, highest).
      Noise, not the rule, limits them there.
    * Momentum's best rate is 5-10 times smaller than mini-batch's (10 times on the quadratic): along a steady
      gradient its steps add up to $\eta / (1 - \mu) = 10\eta$.
    * In the curved Rosenbrock valley the rule matters: the gradient is tiny along the valley floor, so GD,
      SGD and mini-batch crawl; momentum (which accumulates the small gradients), Adagrad and Adam travel
      along the floor and end much closer to $(1, 1)$, while RMSProp and AdaDelta, at their best rates, end
      between the two groups, still in the valley short of the minimum (compare the titles' $f$ above). Adagrad, at its best rate, first jumps far out of
      the valley before its shrinking steps bring it back.

    ## jdl's updates agree with optax's

    jdl writes each optimizer by hand. Here every one of them and its optax counterpart take the same 20
    steps on the same MNIST batches from the same starting parameters; we compare the parameters at the
    end. (jdl's `adadelta(lr)` is optax's `adadelta(learning_rate=lr)`.)
    """),
    code(r"""
    train_data = jdl.data.load("mnist_sample", split="train", batch_size=128, shuffle=True, seed=0)
    batches = [batch for _, batch in zip(range(20), train_data)]
    model = models.mlp()
    params0, state = model.init(jax.random.key(0), (1, 28, 28, 1))


    def loss_fn(params, batch):
        return losses.cross_entropy(model.apply(params, state, batch["image"])[0], batch["label"])


    PAIRS = {  # name: (jdl, optax), same hyperparameters
        "gd": (optim.gd(0.5), optax.sgd(0.5)),
        "sgd": (optim.sgd(0.01), optax.sgd(0.01)),  # the rule alone: here fed the same batches as the others
        "minibatch": (optim.gd(0.1), optax.sgd(0.1)),
        "momentum": (optim.momentum(0.01, momentum=0.9), optax.sgd(0.01, momentum=0.9)),
        "adagrad": (optim.adagrad(0.05), optax.adagrad(0.05)),
        "rmsprop": (optim.rmsprop(1e-3), optax.rmsprop(1e-3)),
        "adadelta": (optim.adadelta(1.0), optax.adadelta(learning_rate=1.0)),
        "adam": (optim.adam(1e-3), optax.adam(1e-3)),
    }


    def train_20_steps(optimizer):
        @jax.jit
        def step(params, opt_state, batch):
            grads = jax.grad(loss_fn)(params, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        params, opt_state = params0, optimizer.init(params0)
        for batch in batches:
            params, opt_state = step(params, opt_state, batch)
        return params


    agreement = {}
    print(f"{'optimizer':10s} {'max |jdl - optax|':>18s} {'max |change|':>13s}")
    for name, (ours, theirs) in PAIRS.items():
        a, b = train_20_steps(ours), train_20_steps(theirs)
        diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        moved = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(params0)))
        agreement[name] = diff
        print(f"{name:10s} {diff:18.2e} {moved:13.2e}")
    assert max(agreement.values()) < 1e-5, agreement
    """),
    md(r"""
    The parameters moved by about $10^{-2}$ to $0.3$ in those steps, and jdl and optax end at the same
    parameters: on a CPU usually bit for bit, elsewhere within a few float32 rounding errors (the assertion
    allows $10^{-5}$).

    ## The eight on MNIST

    Finally the MLP on `mnist_sample`, each optimizer with its default learning rate in `jdl compare`
    (`jdl.compare.PRESETS`), all trained together in one compiled program by `jdl.compare.run`. Notebook 8
    does this comparison properly: several seeds and a learning-rate search.
    """),
    code(r"""
    result = jdl.compare.run("mnist_sample", "mlp", jdl.compare.CLASSIC, seeds=SEEDS, epochs=EPOCHS, progress=False)
    print(result.table())
    """),
    code(r"""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(14, 4.2))
    for name in jdl.compare.CLASSIC:
        runs = [r for r in result.runs if r["optimizer"] == name and r["epochs"]]
        epochs = [e["epoch"] for e in runs[0]["epochs"]]
        loss = np.mean([[e["train_loss"] for e in r["epochs"]] for r in runs], axis=0)
        accuracy = np.mean([[e["test_accuracy"] for e in r["epochs"]] for r in runs], axis=0)
        ax0.plot(epochs, loss, marker="o", ms=3, label=name)
        ax1.plot(epochs, accuracy, marker="o", ms=3, label=name)
    ax0.set_yscale("log")
    ax0.set_ylabel("training loss")
    ax1.set_ylabel("test accuracy")
    for ax in (ax0, ax1):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax1.legend(ncol=2, fontsize=8)
    plt.show()
    """),
    md(r"""
    ## Takeaway

    * All eight are small variations on $\theta \leftarrow \theta - \eta \cdot (\text{something computed from
      the gradients})$: momentum sums past gradients with decaying weights (a steady gradient's step grows to
      $\eta / (1 - \mu)$ times it), the adaptive methods divide by their running size, Adam does both.
    * Per-coordinate scaling helps most where the loss surface is badly conditioned along the coordinate axes;
      a diagonal rescaling cannot straighten a rotated valley (the quadratic above, turned by 30°, shows it);
      momentum helps where gradients keep pointing the same way.
    * Each optimizer needs its own learning rate: compare them at their best rates, not at one shared rate.
    * jdl's hand-written updates match optax's to float32 rounding, and they are interchangeable
      (`GradientTransformation(init, update)` in both).
    """),
    md(r"""
    ## Exercises

    1. With a constant gradient $g$, show that momentum's step tends to $\eta g / (1 - \mu)$. Check it with
       `optim.momentum(0.1, momentum=0.9)` on $f(x) = 3x$ for 100 steps.
    2. Turn the quadratic back onto the axes (angle 0) and rerun the comparison. Which optimizers gain, and
       why does a per-coordinate step size help now and not before?
    3. Write Adam's update from the table in `jax.numpy` (state $m, v, t$) and check 10 steps against
       `optim.adam(1e-3)` on the MLP's parameters.
    4. Add `"lion": (lambda lr: optim.lion(lr, weight_decay=0.0), 16)` to `OPTIMIZERS` and rerun the grid.
       Every step of Lion moves each coordinate by exactly the learning rate: where does that help, and
       where does it keep Lion from settling at the minimum?
    """),
]
