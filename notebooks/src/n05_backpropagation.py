"""05 Backpropagation: an MLP's backward pass by hand in jax.numpy, checked against jax.grad."""

# ruff: noqa: E501 - markdown tables and formulas are easier to read unwrapped

from src.common import code, md, setup

CELLS = [
    md(r"""
    # 5. Backpropagation by hand

    `jax.grad` computes gradients by reverse-mode automatic differentiation. For an MLP that is exactly
    **backpropagation**: the chain rule applied layer by layer from the loss back to the input. Here we derive
    it, write it in `jax.numpy`, and check it number by number against `jax.grad`.

    **Forward pass.** A batch $X \in \mathbb{R}^{B \times d}$, layers $\ell = 1, \dots, L$:

    $$A_0 = X, \qquad Z_\ell = A_{\ell-1} W_\ell + \mathbf{1} b_\ell^\top, \qquad A_\ell = \mathrm{relu}(Z_\ell)\ (\ell < L),$$

    logits $Z_L$, probabilities $P = \mathrm{softmax}(Z_L)$ row by row, and the mean cross-entropy
    $\mathcal{L} = -\frac{1}{B}\sum_{i} \log P_{i, y_i}$.

    **Backward pass.** Write $\Delta_\ell = \partial \mathcal{L} / \partial Z_\ell$ (same shape as $Z_\ell$).
    The softmax and the cross-entropy together have the simple derivative

    $$\Delta_L = \frac{1}{B}\left(P - Y\right), \qquad Y = \text{one-hot}(y).$$

    Since $Z_\ell = A_{\ell-1} W_\ell + \mathbf{1} b_\ell^\top$ is affine (the bias added to every row),

    $$\frac{\partial \mathcal{L}}{\partial W_\ell} = A_{\ell-1}^\top \Delta_\ell, \qquad
    \frac{\partial \mathcal{L}}{\partial b_\ell} = \mathbf{1}^\top \Delta_\ell, \qquad
    \frac{\partial \mathcal{L}}{\partial A_{\ell-1}} = \Delta_\ell W_\ell^\top,$$

    and through the ReLU, whose derivative is $1$ where its input is positive and $0$ elsewhere,

    $$\Delta_{\ell-1} = \left(\Delta_\ell W_\ell^\top\right) \odot \mathbb{1}[Z_{\ell-1} > 0].$$

    One backward sweep costs about twice the forward pass (two matrix products per layer, for $\partial W$
    and $\partial A$, against one) and needs the forward pass's $A_\ell$ and $Z_\ell$: that is why training stores activations.

    Sources: Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors" (Nature 323,
    1986); Goodfellow et al., *Deep Learning* (2016), §6.5; Griewank & Walther, *Evaluating Derivatives* (2nd
    ed., SIAM, 2008) for reverse-mode automatic differentiation; Baydin et al., "Automatic differentiation in
    machine learning: a survey" (JMLR, 2018).
    """),
    setup("""
    EPOCHS = {"full": 20, "small": 5, "quick": 2}[SIZE]  # epochs of training with the hand-written gradient
    """),
    code(r"""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    from jax.flatten_util import ravel_pytree

    import jdl.data
    from jdl import losses, nn, optim

    # GPUs and TPUs multiply float32 matrices in reduced precision by default (TF32, bfloat16 passes). Ask for
    # full float32 so that both computations below are rounded as float32, whichever hardware runs them.
    jax.config.update("jax_default_matmul_precision", "highest")
    """),
    md(r"""
    ## The network and a batch

    A jdl MLP with two hidden layers; its parameters are `{'dense_0': {'w', 'b'}, 'dense_1': ..., 'dense_2':
    ...}`, so $W_\ell$ is `params[f'dense_{l-1}']['w']`.
    """),
    code(r"""
    model = nn.serial(nn.Flatten(), nn.Dense(128), nn.relu, nn.Dense(64), nn.relu, nn.Dense(10))
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    LAYERS = sorted(params)  # ['dense_0', 'dense_1', 'dense_2']
    print(jax.tree_util.tree_map(jnp.shape, params))

    train_data = jdl.data.load("mnist_sample", split="train", batch_size=256, shuffle=True, seed=0)
    batch = next(iter(train_data))
    images, labels = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    """),
    md(r"""
    ## Forward and backward, written out
    """),
    code(r"""
    def forward(params, images):
        # Returns the logits and what the backward pass needs: every layer's input A and pre-activation Z.
        a = images.reshape(len(images), -1)  # Flatten
        cache = []
        for i, name in enumerate(LAYERS):
            z = a @ params[name]["w"] + params[name]["b"]
            cache.append((a, z))
            a = jnp.maximum(z, 0.0) if i < len(LAYERS) - 1 else z  # ReLU on hidden layers only
        return a, cache


    def cross_entropy(logits, labels):
        shifted = logits - jnp.max(logits, axis=1, keepdims=True)  # log-sum-exp, stable
        log_p = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
        return -jnp.mean(log_p[jnp.arange(len(labels)), labels])


    def backward(params, cache, logits, labels):
        # The gradient of the mean cross-entropy with respect to every parameter, by the chain rule.
        batch_size, classes = logits.shape
        p = jnp.exp(logits - jnp.max(logits, axis=1, keepdims=True))
        p = p / jnp.sum(p, axis=1, keepdims=True)  # softmax
        delta = (p - jax.nn.one_hot(labels, classes)) / batch_size  # dL/dZ_L
        grads = {}
        for i in reversed(range(len(LAYERS))):
            name = LAYERS[i]
            a_in, _ = cache[i]
            grads[name] = {"w": a_in.T @ delta, "b": jnp.sum(delta, axis=0)}
            if i > 0:
                _, z_below = cache[i - 1]
                delta = (delta @ params[name]["w"].T) * (z_below > 0)  # through W, then through the ReLU
        return grads


    def hand_loss_and_grad(params, images, labels):
        logits, cache = forward(params, images)
        return cross_entropy(logits, labels), backward(params, cache, logits, labels)
    """),
    md(r"""
    First the forward pass: our logits and loss against jdl's `model.apply` and `losses.cross_entropy`.
    """),
    code(r"""
    logits, _ = forward(params, images)
    jdl_logits, _ = model.apply(params, state, images)
    print("max |logits - jdl logits| =", float(jnp.max(jnp.abs(logits - jdl_logits))))
    print("loss (hand):", float(cross_entropy(logits, labels)), " loss (jdl):",
          float(losses.cross_entropy(jdl_logits, labels)))
    np.testing.assert_allclose(logits, jdl_logits, rtol=1e-5, atol=1e-6)
    """),
    md(r"""
    ## The check: hand-written gradients against `jax.grad`

    `jax.grad` differentiates jdl's own model and loss, which share no code with ours. Float32 carries about
    7 significant digits (machine epsilon $2^{-23} \approx 1.2 \times 10^{-7}$); two correct computations
    that add in different orders differ in the last digits. So we assert agreement to a relative tolerance of
    $10^{-5}$ and an absolute tolerance of $10^{-6}$ for entries near zero.
    """),
    code(r"""
    def jdl_loss(params, images, labels):
        return losses.cross_entropy(model.apply(params, state, images)[0], labels)


    auto_loss, auto_grads = jax.jit(jax.value_and_grad(jdl_loss))(params, images, labels)
    hand_loss, hand_grads = jax.jit(hand_loss_and_grad)(params, images, labels)

    rows = []
    for name in LAYERS:
        for leaf in ("w", "b"):
            hand, auto = np.asarray(hand_grads[name][leaf]), np.asarray(auto_grads[name][leaf])
            np.testing.assert_allclose(hand, auto, rtol=1e-5, atol=1e-6, err_msg=f"{name}/{leaf}")
            rows.append((f"{name}/{leaf}", hand.shape, np.abs(auto).max(), np.abs(hand - auto).max(),
                         np.max(np.abs(hand - auto) / (np.abs(auto) + 1e-12))))
    np.testing.assert_allclose(hand_loss, auto_loss, rtol=1e-6)

    print(f"{'parameter':14s} {'shape':12s} {'max |grad|':>11s} {'max |diff|':>11s} {'max rel diff':>13s}")
    for name, shape, size, diff, rel in rows:
        print(f"{name:14s} {str(shape):12s} {size:11.3e} {diff:11.3e} {rel:13.3e}")
    print("all", sum(np.prod(s) for _, s, *_ in rows), "gradient entries agree with jax.grad to float32 rounding")
    """),
    code(r"""
    hand_flat = np.concatenate([np.ravel(hand_grads[n][k]) for n in LAYERS for k in ("w", "b")])
    auto_flat = np.concatenate([np.ravel(auto_grads[n][k]) for n in LAYERS for k in ("w", "b")])
    nonzero = auto_flat != 0

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax0.loglog(np.abs(auto_flat[nonzero]), np.abs(hand_flat[nonzero]), ".", ms=1, alpha=0.3)
    lims = [np.abs(auto_flat[nonzero]).min(), np.abs(auto_flat).max()]
    ax0.plot(lims, lims, "k--", lw=0.8)
    ax0.set_xlabel("|jax.grad|")
    ax0.set_ylabel("|hand-written|")
    ax0.set_title(f"{nonzero.sum()} nonzero gradient entries")
    ulps = np.abs(hand_flat - auto_flat) / np.spacing(np.abs(auto_flat).astype(np.float32))
    counts = np.bincount(np.minimum(np.round(ulps), 10).astype(int), minlength=11)
    ax1.bar(range(11), counts)
    ax1.set_yscale("log")
    ax1.set_ylim(0.5, 2 * len(ulps))
    ax1.set_xticks(range(11), [str(k) for k in range(10)] + ["10+"])
    ax1.set_xlabel("|hand-written - jax.grad| in units of the last float32 place")
    ax1.set_ylabel("gradient entries")
    ax1.set_title(f"{counts[0]} of {len(ulps)} entries are bit for bit equal")
    plt.show()
    """),
    md(r"""
    ## Why not finite differences?

    The textbook check, $\frac{\mathcal{L}(\theta + \epsilon v) - \mathcal{L}(\theta - \epsilon v)}{2\epsilon}
    \approx \nabla\mathcal{L} \cdot v$, is only good to a few digits in float32: a small $\epsilon$ drowns in
    rounding error, a large one in the higher-order terms (the central difference's error grows like
    $\epsilon^2$ times the third derivative: the curvature's term cancels). It still checks the gradient's component along the random direction
    $v$, independently of both implementations.
    """),
    code(r"""
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(1), flat.shape)
    v = v / jnp.linalg.norm(v)
    exact = float(jnp.dot(ravel_pytree(hand_grads)[0], v))
    epsilons = np.logspace(-5, 0, 11)
    errors = []
    for eps in epsilons:
        up = jdl_loss(unravel(flat + eps * v), images, labels)
        down = jdl_loss(unravel(flat - eps * v), images, labels)
        errors.append(abs(float((up - down) / (2 * eps)) - exact) / abs(exact))
    plt.figure(figsize=(6.5, 4))
    plt.loglog(epsilons, errors, marker="o")
    plt.xlabel("epsilon")
    plt.ylabel("relative error of the finite difference")
    plt.title("central differences in float32")
    plt.grid(alpha=0.3)
    plt.show()
    print(f"directional derivative (hand-written backprop): {exact:.6f}; best finite-difference relative error "
          f"{min(errors):.1e}")
    """),
    md(r"""
    ## Training with the hand-written gradient

    The hand-written gradient is a drop-in replacement for `jax.grad`: plain gradient descent with each,
    from the same start on the same batches, gives the same curves.
    """),
    code(r"""
    optimizer = optim.gd(0.1)


    def make_step(loss_and_grad):
        @jax.jit
        def step(params, opt_state, images, labels):
            loss, grads = loss_and_grad(params, images, labels)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optim.apply_updates(params, updates), opt_state, loss

        return step


    curves = {}
    finals = {}
    for name, loss_and_grad in {"hand-written": hand_loss_and_grad,
                                "jax.grad": jax.value_and_grad(jdl_loss)}.items():
        step = make_step(loss_and_grad)
        p, s = params, optimizer.init(params)
        # back to the first batch of epoch 0 (a loader's position: notebook 6), so both see the same batches
        train_data.load_state_dict({"epoch": 0, "step": 0, "seed": 0})
        curve = []
        for _ in range(EPOCHS):
            for b in train_data:
                p, s, loss = step(p, s, b["image"], b["label"])
                curve.append(float(loss))
        curves[name], finals[name] = curve, p

    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(finals["hand-written"]),
                                                              jax.tree.leaves(finals["jax.grad"])))
    print(f"{len(curves['jax.grad'])} steps; max |parameter difference| at the end: {gap:.2e}")
    plt.figure(figsize=(7, 4))
    plt.plot(curves["jax.grad"], lw=3, alpha=0.5, label="jax.grad")
    plt.plot(curves["hand-written"], "k", lw=0.8, label="hand-written backprop")
    plt.yscale("log")
    plt.xlabel("step")
    plt.ylabel("batch loss")
    plt.legend()
    plt.grid(alpha=0.3)
    plt.show()
    """),
    md(r"""
    ## Takeaway

    * Backpropagation is the chain rule organised as one backward sweep: $\Delta_L = (P - Y)/B$, then per
      layer $\partial W = A^\top \Delta$, $\partial b = \mathbf{1}^\top \Delta$, $\Delta \leftarrow (\Delta
      W^\top) \odot \mathrm{relu}'(Z)$.
    * It needs the forward pass's activations, and costs about twice the forward pass.
    * Our version matches `jax.grad` on every one of the ~110,000 entries to float32 rounding (asserted above);
      `jax.grad` derives the same sweep automatically for any composition of jax operations, which is why jdl's
      models are plain functions.
    """),
    md(r"""
    ## Exercises

    1. Show that $\partial \mathcal{L} / \partial b_\ell = \mathbf{1}^\top \Delta_\ell$ from
       $Z_\ell = A_{\ell-1} W_\ell + \mathbf{1} b_\ell^\top$.
    2. Replace the ReLU by the sigmoid $\sigma$: derive $\Delta_{\ell-1}$ (use $\sigma' = \sigma (1 - \sigma)$),
       change `backward` accordingly and check it against `jax.grad`.
    3. Count the multiply-adds of one forward and one backward pass of this MLP for a batch of $B$. Where does
       "about twice the forward pass" come from, and which product does the first layer not need?
    """),
]
