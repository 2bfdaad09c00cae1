"""04 Loss functions: jdl's losses and their gradients against margin or error; when to use which."""

# ruff: noqa: E501 - markdown tables and formulas are easier to read unwrapped

from src.common import code, md, setup

CELLS = [
    md(r"""
    # 4. Loss functions

    The loss says what "wrong" means, and its **gradient** is all the optimizer ever sees of it. For a
    classifier with score $f(x)$ and label $y \in \{-1, +1\}$ the natural variable is the **margin** $m = y
    f(x)$ (positive: right side, large: confident); for a regression the **error** $e = \hat{y} - y$.

    | loss | formula | jdl |
    |---|---|---|
    | log loss (binary cross-entropy) | $\log(1 + e^{-m})$ | `log_loss(logits, labels01)` |
    | exponential | $e^{-m}$ | `exponential_loss(scores, labels_pm1)` |
    | hinge | $\max(0, 1 - m)$ | `hinge_loss(scores, labels_pm1)` |
    | cross-entropy (softmax) | $-\log \frac{e^{f_y}}{\sum_k e^{f_k}}$ | `cross_entropy(logits, labels)` |
    | multiclass hinge (Crammer–Singer) | $\max(0, 1 + \max_{k \ne y} f_k - f_y)$ | `multiclass_hinge_loss(scores, labels)` |
    | KL divergence | $\sum_k t_k \log \frac{t_k}{q_k}$ | `kl_divergence(log_q, t)` |
    | squared error | $e^2$ | `mse(predictions, targets)` |
    | absolute error | $\lvert e \rvert$ | `mae(predictions, targets)` |
    | Huber | $\frac{1}{2} e^2$ if $\lvert e\rvert \le \delta$, else $\delta(\lvert e\rvert - \frac{\delta}{2})$ | `huber(predictions, targets, delta=1.0)` |

    Every jdl loss has the signature `fn(predictions, targets, *, reduction='mean')` and is written in a
    numerically stable form (log-sum-exp, softplus), so it stays finite for logits of any size.

    Sources: Goodfellow et al., *Deep Learning* (2016), §5.5 and §6.2; Hastie, Tibshirani & Friedman, *The
    Elements of Statistical Learning* (2nd ed., 2009), §10.6 (loss functions and robustness) and §12.3.2;
    Bishop, *Pattern Recognition and Machine Learning* (2006), §4.3.2 and §7.1.2; Cortes & Vapnik (1995);
    Crammer & Singer (JMLR, 2001); Huber, "Robust estimation of a location parameter" (Ann. Math. Stat., 1964).
    """),
    setup("""
    EPOCHS = {"full": 20, "small": 8, "quick": 3}[SIZE]  # epochs on MNIST
    """),
    code(r"""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import jdl.data
    from jdl import losses, models, optim, train
    """),
    md(r"""
    ## Classification losses against the margin

    Each loss is evaluated on scores $f$ with label $y = +1$, so the margin is $m = f$; `jax.grad` gives the
    derivative. The softmax cross-entropy and the multiclass hinge loss of two classes with scores $(f, 0)$
    are the log loss and the hinge loss again, so their curves lie on top of those.
    """),
    code(r"""
    m = jnp.linspace(-3, 3, 601)
    pointwise = dict(reduction="none")
    classification = {
        "log loss": lambda f: losses.log_loss(f, jnp.ones_like(f), **pointwise),
        "exponential": lambda f: losses.exponential_loss(f, jnp.ones_like(f), **pointwise),
        "hinge": lambda f: losses.hinge_loss(f, jnp.ones_like(f), **pointwise),
        "cross-entropy, 2 classes": lambda f: losses.cross_entropy(
            jnp.stack([f, jnp.zeros_like(f)], -1), jnp.zeros(f.shape, jnp.int32), **pointwise),
        "multiclass hinge, 2 classes": lambda f: losses.multiclass_hinge_loss(
            jnp.stack([f, jnp.zeros_like(f)], -1), jnp.zeros(f.shape, jnp.int32), **pointwise),
    }
    styles = {"cross-entropy, 2 classes": dict(ls="--", lw=2.5), "multiclass hinge, 2 classes": dict(ls=":", lw=3)}

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax0.step(m, (m <= 0).astype(float), color="gray", where="mid", label="0-1 loss")
    for name, fn in classification.items():
        (line,) = ax0.plot(m, fn(m), label=name, **styles.get(name, {}))
        slope = jax.vmap(jax.grad(lambda f, fn=fn: fn(f[None])[0]))(m)
        ax1.plot(m, slope, label=name, color=line.get_color(), **styles.get(name, {}))
    ax0.set_ylim(-0.1, 4)
    ax0.set_title("loss")
    ax1.set_ylim(-3, 0.3)
    ax1.set_title("derivative with respect to the score f")
    ax0.set_ylabel("loss")
    ax1.set_ylabel("d loss / d f")
    for ax in (ax0, ax1):
        ax.set_xlabel("margin m = y f")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    plt.show()
    """),
    md(r"""
    Read the derivatives: the **log loss** keeps pushing even correctly classified points, but less and less
    (its gradient $-\sigma(-m)$ fades smoothly); the **hinge loss** stops exactly at margin 1, so only points
    near or beyond the boundary (the support vectors) matter; the **exponential loss** pushes exponentially
    hard on badly misclassified points, which makes it sensitive to label noise. All are convex surrogates
    of the 0-1 loss, which has no useful gradient at all; the hinge and exponential losses are upper bounds
    of it, the log loss only in base 2 (divided by $\log 2$: at margin 0 it is $\log 2 \approx 0.69 < 1$).

    ## Regression losses against the error
    """),
    code(r"""
    e = jnp.linspace(-3, 3, 601)
    regression = {
        "mse": lambda p: losses.mse(p, jnp.zeros_like(p), **pointwise),
        "mae": lambda p: losses.mae(p, jnp.zeros_like(p), **pointwise),
        "huber (delta = 1)": lambda p: losses.huber(p, jnp.zeros_like(p), delta=1.0, **pointwise),
    }
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.2))
    for name, fn in regression.items():
        ax0.plot(e, fn(e), label=name)
        ax1.plot(e, jax.vmap(jax.grad(lambda p, fn=fn: fn(p[None])[0]))(e), label=name)
    ax0.set_ylim(-0.2, 5)
    ax0.set_title("loss")
    ax1.set_title("derivative with respect to the prediction")
    ax0.set_ylabel("loss")
    ax1.set_ylabel("d loss / d prediction")
    for ax in (ax0, ax1):
        ax.set_xlabel("error e = prediction - target")
        ax.grid(alpha=0.3)
        ax.legend()
    plt.show()
    """),
    md(r"""
    The squared error's gradient grows with the error, so a single outlier can dominate a batch; the
    absolute error's gradient is $\pm 1$ whatever the error (robust, but it never shrinks near the optimum);
    Huber is quadratic near zero and linear beyond $\delta$: the best of both.

    ### Outliers: a line fitted three ways

    Fifty points on a line, five of them corrupted; the same model $\hat{y} = w x + b$ fitted by minimising
    each loss with Adam.
    """),
    code(r"""
    rng = np.random.default_rng(0)
    x = np.linspace(-2, 2, 50).astype(np.float32)
    y = (1.5 * x + 0.5 + rng.normal(0, 0.2, 50)).astype(np.float32)
    y[rng.choice(50, 5, replace=False)] += rng.uniform(6, 10, 5).astype(np.float32)  # outliers


    def fit_line(loss_fn, steps=2000):
        optimizer = optim.adam(0.05)
        theta = jnp.zeros(2)

        def step(carry, _):
            theta, opt_state = carry
            grads = jax.grad(lambda t: loss_fn(t[0] * x + t[1], y))(theta)
            updates, opt_state = optimizer.update(grads, opt_state, theta)
            return (optim.apply_updates(theta, updates), opt_state), None

        (theta, _), _ = jax.lax.scan(step, (theta, optimizer.init(theta)), None, length=steps)
        return np.asarray(theta)


    plt.figure(figsize=(7, 4.5))
    plt.plot(x, y, "k.", label="data (5 outliers)")
    plt.plot(x, 1.5 * x + 0.5, "k--", lw=1, label="true line: 1.5 x + 0.5")
    for name, fn in {"mse": losses.mse, "mae": losses.mae, "huber": losses.huber}.items():
        w, b = fit_line(fn)
        plt.plot(x, w * x + b, label=f"{name}: {w:.2f} x + {b:.2f}")
    plt.legend()
    plt.grid(alpha=0.3)
    plt.xlabel("x")
    plt.ylabel("y")
    plt.title("least squares is pulled by the outliers")
    plt.show()
    """),
    md(r"""
    ## KL divergence and cross-entropy with soft targets

    For a target distribution $t$ and a prediction $q$, cross-entropy and KL differ by the entropy of the
    target, a constant: $H(t, q) = H(t) + \mathrm{KL}(t \,\|\, q)$. So they have the same gradient, and
    KL is zero exactly when $q = t$. Here $t = (0.7, 0.3)$ and $q = (p, 1 - p)$.
    """),
    code(r"""
    t = jnp.array([0.7, 0.3])
    p = jnp.linspace(0.01, 0.99, 197)
    log_q = jnp.log(jnp.stack([p, 1 - p], -1))
    kl = losses.kl_divergence(log_q, jnp.broadcast_to(t, log_q.shape), reduction="none")
    logits = log_q  # log-probabilities are valid logits
    ce = losses.cross_entropy(logits, jnp.broadcast_to(t, logits.shape), reduction="none")
    entropy = -jnp.sum(t * jnp.log(t))

    plt.figure(figsize=(7, 4))
    plt.plot(p, ce, label="cross-entropy H(t, q)")
    plt.plot(p, kl, label="KL(t || q)")
    plt.plot(p, kl + entropy, "k:", lw=2, label="KL + H(t)")
    plt.axvline(0.7, color="gray", lw=0.8)
    plt.xlabel("predicted probability p of class 0")
    plt.ylabel("nats")
    plt.ylim(0, 3)
    plt.legend()
    plt.grid(alpha=0.3)
    plt.show()
    print("min KL:", float(kl.min()), "at p =", float(p[jnp.argmin(kl)]))
    """),
    md(r"""
    ## Numerical stability

    Computed naively, $-\log \mathrm{softmax}(f)_y$ overflows for large logits ($e^{10^4} = \infty$ in
    float32) and the loss and gradient become `nan`. jdl computes $\log\sum_k e^{f_k} - f_y$ with the
    maximum subtracted first.
    """),
    code(r"""
    big = jnp.array([[1e4, 0.0, -1e4]])
    label = jnp.array([1])


    def naive(logits, labels):
        probabilities = jnp.exp(logits) / jnp.sum(jnp.exp(logits), -1, keepdims=True)
        return -jnp.mean(jnp.log(probabilities[jnp.arange(len(labels)), labels]))


    print("naive:", naive(big, label), jax.grad(naive)(big, label))
    print("jdl:  ", losses.cross_entropy(big, label), jax.grad(losses.cross_entropy)(big, label))
    """),
    md(r"""
    ## The same network, three losses, on MNIST

    The MLP trained with cross-entropy, with the multiclass hinge loss, and with the squared error between
    the softmax output and the one-hot label (a common beginner's choice). Same optimizer, same data.
    """),
    code(r"""
    train_data = jdl.data.load("mnist_sample", split="train", batch_size=128, shuffle=True, seed=0)
    test_data = jdl.data.load("mnist_sample", split="test", batch_size=1000)


    def softmax_mse(logits, labels):
        return losses.mse(jax.nn.softmax(logits), jax.nn.one_hot(labels, logits.shape[-1]))


    candidates = {"cross_entropy": losses.cross_entropy, "multiclass_hinge_loss": losses.multiclass_hinge_loss,
                  "mse(softmax, one-hot)": softmax_mse}
    mnist = {}
    for name, loss_fn in candidates.items():
        result = train.fit(models.mlp(), loss_fn, optim.adam(1e-3), train_data, epochs=EPOCHS,
                           eval_data=test_data, seed=0, progress=False)
        mnist[name] = [h["test_accuracy"] for h in result.history]
        print(f"{name:24s} test accuracy after {EPOCHS} epochs: {mnist[name][-1]:.3f}")

    plt.figure(figsize=(7, 4))
    for name, curve in mnist.items():
        plt.plot(range(1, EPOCHS + 1), curve, marker="o", label=name)
    plt.xlabel("epoch")
    plt.ylabel("test accuracy")
    plt.grid(alpha=0.3)
    plt.legend()
    plt.show()
    """),
    md(r"""
    On an easy problem like this the three end up close (Adam also rescales small gradients). The difference
    is in the gradient: cross-entropy's, $\mathrm{softmax}(f) - \text{one-hot}(y)$, stays large exactly when
    the network is confidently wrong, while squared error on probabilities is multiplied by the softmax's
    derivative, which vanishes when the softmax saturates on a wrong class; with plain gradient descent
    and deeper networks that slows learning (Goodfellow et al., §6.2.2.3). The hinge loss stops pushing once
    every margin exceeds 1 and gives no probabilities.

    ## When to use which

    | task | loss | why |
    |---|---|---|
    | multi-class classification | `cross_entropy` | probabilistic (maximum likelihood), gradients that do not vanish when wrong; `label_smoothing` for calibration |
    | binary / multi-label classification | `log_loss` | the same for independent yes/no outputs (one sigmoid each) |
    | margin-based classification, SVM-style | `hinge_loss`, `multiclass_hinge_loss` | ignores points beyond the margin; no probabilities |
    | boosting | `exponential_loss` | AdaBoost's loss; sensitive to mislabelled points |
    | matching distributions (distillation, soft targets) | `kl_divergence` or `cross_entropy` with probability targets | zero exactly at the target distribution |
    | regression, Gaussian noise | `mse` | maximum likelihood under Gaussian noise; punishes large errors |
    | regression with outliers | `huber`, `mae` | bounded gradients; `mae` estimates the median |

    ## Takeaway

    * A loss is judged by its gradient: how hard it pushes on which examples.
    * Cross-entropy is the default for classification; squared error for regression unless there are
      outliers (Huber).
    * Compute losses in a stable form (jdl does): naive formulas break for large logits.
    """),
]
