"""02 Gradient descent: full-batch, stochastic and mini-batch, on a 2-D loss surface and on MNIST."""

# ruff: noqa: E501 - markdown tables and formulas are easier to read unwrapped

from src.common import code, md, setup

CELLS = [
    md(r"""
    # 2. Gradient descent: full-batch, stochastic, mini-batch

    Training minimises an average over the $N$ training examples,
    $L(\theta) = \frac{1}{N} \sum_{i=1}^{N} \ell_i(\theta)$. **Gradient descent** steps against the gradient,

    $$\theta_{t+1} = \theta_t - \eta\, g_t,$$

    with learning rate $\eta$. The three classic variants differ only in which examples $g_t$ is computed on:

    | variant | gradient $g_t$ | cost per step | steps per epoch |
    |---|---|---|---|
    | full-batch (GD) | $\nabla L(\theta_t) = \frac{1}{N}\sum_{i=1}^{N} \nabla \ell_i(\theta_t)$ | $N$ | 1 |
    | stochastic (SGD) | $\nabla \ell_{i_t}(\theta_t)$, one random example | 1 | $N$ |
    | mini-batch | $\frac{1}{B}\sum_{i \in \mathcal{B}_t} \nabla \ell_i(\theta_t)$, a random batch of $B$ | $B$ | $N/B$ |

    The stochastic gradients are unbiased, $\mathbb{E}[g_t] = \nabla L(\theta_t)$, but noisy: their variance
    shrinks like $1/B$. So SGD takes many cheap, noisy steps, GD few expensive, exact ones, and mini-batches
    sit in between (and use vector hardware well). In jdl they are literally one optimizer,
    `jdl.optim.gd(learning_rate)`, fed batches of $N$, $1$ or $B$ examples.

    Sources: Cauchy, "Méthode générale pour la résolution des systèmes d'équations simultanées" (1847);
    Robbins & Monro, "A stochastic approximation method" (Ann. Math. Stat., 1951); Bottou, Curtis & Nocedal,
    "Optimization methods for large-scale machine learning" (SIAM Review, 2018); Ruder, "An overview of
    gradient descent optimization algorithms" (arXiv:1609.04747, 2016); Goodfellow et al., *Deep Learning*
    (2016), §4.3 and §8.1.3.
    """),
    setup("""
    EPOCHS_2D = {"full": 30, "small": 20, "quick": 10}[SIZE]  # epochs on the 2-D problem
    EPOCHS = {"full": 60, "small": 20, "quick": 6}[SIZE]  # epochs on MNIST
    """),
    code(r"""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    from jax import lax

    import jdl.data
    from jdl import losses, models, optim, train
    """),
    md(r"""
    ## A loss surface we can draw

    Linear regression with two parameters, $\theta = (w, b)$, on $N = 200$ points $y_i = 2 x_i - 1 +
    \text{noise}$: the loss $L(w, b) = \frac{1}{N}\sum_i (w x_i + b - y_i)^2$ is a bowl whose contours we can
    plot. The inputs are not centred ($x_i \sim \mathcal{N}(1, 0.5^2)$), which makes the bowl a long, narrow
    valley: $w$ and $b$ trade off against each other.
    """),
    code(r"""
    N = 200
    rng = np.random.default_rng(0)
    x_host = rng.normal(1.0, 0.5, N).astype(np.float32)
    y_host = (2.0 * x_host - 1.0 + rng.normal(0, 0.5, N)).astype(np.float32)
    X, Y = jnp.asarray(x_host), jnp.asarray(y_host)
    theta0 = jnp.array([-2.0, 3.0])  # the starting point (w, b)


    def loss(theta, x, y):
        return losses.mse(theta[0] * x + theta[1], y)


    def descend(batch_size, learning_rate, epochs, seed=0):
        # jdl's gradient descent fed batches of `batch_size`, reshuffled every epoch; returns theta after each step.
        optimizer = optim.gd(learning_rate)
        rng = np.random.default_rng(seed)
        per_epoch = N // batch_size
        order = np.concatenate([rng.permutation(N)[: per_epoch * batch_size] for _ in range(epochs)])
        batches = jnp.asarray(order.reshape(-1, batch_size))

        def step(carry, index):
            theta, opt_state = carry
            grads = jax.grad(loss)(theta, X[index], Y[index])
            updates, opt_state = optimizer.update(grads, opt_state, theta)
            theta = optim.apply_updates(theta, updates)
            return (theta, opt_state), theta

        _, path = lax.scan(step, (theta0, optimizer.init(theta0)), batches)
        return np.concatenate([theta0[None], np.asarray(path)])


    LR = 0.1
    variants = {"full-batch (B = N)": N, "mini-batch (B = 20)": 20, "stochastic (B = 1)": 1}
    paths = {name: descend(b, LR, EPOCHS_2D) for name, b in variants.items()}
    for name, path in paths.items():
        print(f"{name:20s} {len(path) - 1:5d} steps, final (w, b) = {path[-1].round(3)}, "
              f"loss {float(loss(path[-1], X, Y)):.4f}")
    best = np.linalg.lstsq(np.stack([x_host, np.ones(N)], 1), y_host, rcond=None)[0]
    print("least squares:", best.round(3), f"loss {float(loss(jnp.asarray(best), X, Y)):.4f}")
    """),
    md(r"""
    The same learning rate $\eta = 0.1$ and the same budget of epochs (passes over the data) for all three.
    Full-batch GD walks smoothly down the valley but makes one step per epoch; SGD makes $N$ steps per epoch
    and gets near the minimum quickly, then jitters around it (its step noise does not vanish with a
    constant $\eta$); mini-batches are in between.
    """),
    code(r"""
    w_grid, b_grid = np.meshgrid(np.linspace(-3, 4, 200), np.linspace(-3, 4, 200))
    surface = jax.vmap(lambda t: loss(t, X, Y))(jnp.stack([w_grid.ravel(), b_grid.ravel()], 1))
    surface = np.asarray(surface).reshape(w_grid.shape)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    for ax, (name, path) in zip(axes, paths.items()):
        ax.contour(w_grid, b_grid, surface, levels=np.logspace(-0.7, 1.7, 15), cmap="viridis", linewidths=0.8)
        ax.plot(path[:, 0], path[:, 1], "-", color="C3", lw=0.7, alpha=0.8)
        ax.plot(path[::max(1, len(path) // 40), 0], path[::max(1, len(path) // 40), 1], ".", color="C3", ms=3)
        ax.plot(*theta0, "ko", ms=6, label="start")
        ax.plot(*best, "k*", ms=12, label="minimum")
        ax.set_title(f"{name}: {len(path) - 1} steps in {EPOCHS_2D} epochs")
        ax.set_xlabel("w")
    axes[0].set_ylabel("b")
    axes[0].legend(loc="upper right")
    plt.show()
    """),
    code(r"""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
    full_loss = jax.jit(jax.vmap(lambda t: loss(t, X, Y)))
    for (name, path), b in zip(paths.items(), variants.values()):
        curve = np.asarray(full_loss(jnp.asarray(path)))
        ax0.plot(np.arange(len(path)) * b / N, curve, label=name)
        ax1.plot(np.arange(len(path)), curve, label=name)
    ax0.set_xlabel("epochs (examples seen / N)")
    ax1.set_xlabel("updates (steps)")
    ax1.set_xscale("log")
    for ax in (ax0, ax1):
        ax.set_yscale("log")
        ax.set_ylabel("training loss L(w, b)")
        ax.grid(alpha=0.3)
        ax.legend()
    plt.show()
    """),
    md(r"""
    Per **epoch** (the same computation), SGD and mini-batch are far ahead; per **update**, full-batch GD is
    the most effective step. Which wins in wall-clock time depends on how much a step of $B$ examples costs:
    on a GPU a batch of 128 costs about as much as a batch of 1, which is why mini-batches are the default.

    ## The learning rate

    With a constant learning rate, SGD's final jitter scales with $\eta$: a smaller rate gets closer to the
    minimum but more slowly. Too large a rate is worse than jitter: a single example's step is unstable once
    $\eta$ times that example's curvature exceeds 2, and at $\eta = 0.3$ some steps below throw the path out of
    the window before it comes back. Robbins & Monro's conditions $\sum_t \eta_t = \infty,\ \sum_t \eta_t^2 < \infty$
    (e.g. $\eta_t = \eta_0 / (1 + t / \tau)$) make the noise die out. Any function `step -> lr` can be a
    learning rate, e.g. `optim.gd(lambda t: 0.1 / (1 + t / 100))`; the schedules in `jdl.optim.schedules`
    (exponential, cosine) decay faster and stop short of that guarantee.
    """),
    code(r"""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for ax, lr in zip(axes, (0.3, 0.1, 0.02)):
        path = descend(1, lr, EPOCHS_2D)
        ax.contour(w_grid, b_grid, surface, levels=np.logspace(-0.7, 1.7, 15), cmap="viridis", linewidths=0.8)
        ax.plot(path[:, 0], path[:, 1], "-", color="C3", lw=0.5, alpha=0.7)
        ax.plot(*best, "k*", ms=12)
        last_epoch = float(jnp.mean(jax.vmap(lambda theta: loss(theta, X, Y))(jnp.asarray(path[-N:]))))
        ax.set_title(f"SGD, learning rate {lr}\nmean loss over the last epoch {last_epoch:.3f}", fontsize=10)
        ax.set_xlim(w_grid.min(), w_grid.max())
        ax.set_xlabel("w")
    axes[0].set_ylabel("b")
    plt.show()
    """),
    md(r"""
    ## The three on MNIST

    Now the MLP of notebook 1 on `mnist_sample` (4,000 training digits), trained with `optim.gd` fed the whole
    training set per step (full-batch, $\eta = 0.5$), one example per step ($\eta = 0.01$) and 128 examples
    per step ($\eta = 0.1$). These learning rates are the presets that `jdl compare` uses. The batch size is
    set in the loader, the update rule is the same.
    """),
    code(r"""
    test_data = jdl.data.load("mnist_sample", split="test", batch_size=1000)
    setups = {"full-batch": (4000, 0.5), "stochastic": (1, 0.01), "mini-batch": (128, 0.1)}
    histories = {}
    for name, (batch_size, lr) in setups.items():
        train_data = jdl.data.load("mnist_sample", split="train", batch_size=batch_size, shuffle=True, seed=0)
        result = train.fit(models.mlp(), losses.cross_entropy, optim.gd(lr), train_data, epochs=EPOCHS,
                           eval_data=test_data, seed=0, progress=False)
        histories[name] = result.history
        last = result.history[-1]
        print(f"{name:11s} B={batch_size:5d} lr={lr:<5}: {len(train_data):5d} steps/epoch, "
              f"train loss {last['train_loss']:.3f}, test accuracy {last['test_accuracy']:.3f}, "
              f"{sum(h['time_s'] for h in result.history):.2f} s training")
    """),
    code(r"""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        seconds = np.cumsum([h["time_s"] for h in history])
        axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, label=name)
        axes[1].plot(epochs, [h["test_accuracy"] for h in history], marker="o", ms=3, label=name)
        axes[2].plot(seconds, [h["test_accuracy"] for h in history], marker="o", ms=3, label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss (mean over the epoch)")
    axes[1].set_ylabel("test accuracy")
    axes[2].set_ylabel("test accuracy")
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("epoch")
    axes[2].set_xlabel("training time (s, compilation excluded)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    plt.show()
    """),
    md(r"""
    ## Takeaway

    * Full-batch, stochastic and mini-batch gradient descent are one update, $\theta \leftarrow \theta - \eta
      g$, computed on $N$, $1$ or $B$ examples: in jdl, `optim.gd` with a loader's `batch_size`.
    * Per pass over the data, stochastic and mini-batch steps make much more progress; the price is gradient
      noise, which a constant learning rate never averages away (decay it, or use larger batches).
    * Mini-batches are the practical compromise: per second of training they keep up with SGD (right panel),
      at the hardware efficiency of batched computation, though per epoch they trail it at these rates.

    Next: notebook 3 changes the update rule itself (momentum, adaptive learning rates).
    """),
    md(r"""
    ## Exercises

    1. Rerun the mini-batch setup on MNIST with batches of 8 and of 1,024 (and the same $\eta$). How do the
       curves per epoch and per update move, and why?
    2. Give SGD at $\eta_0 = 0.3$ a decaying rate, `optim.gd(lambda t: 0.3 / (1 + t / 100))`, on the
       two-parameter problem. Compare its last epoch's mean loss with the constant rates above.
    3. For full-batch gradient descent on a quadratic loss with Hessian $H$, show that the iteration is
       stable exactly when $\eta < 2 / \lambda_{\max}(H)$. Compute $\lambda_{\max}$ for the two-parameter
       problem with `jax.hessian` and check the bound by running `optim.gd` just below and just above it.
    """),
]
