"""01 Neural networks: an MLP from layers to a trained classifier on mnist_sample."""

# ruff: noqa: E501 - markdown tables and formulas are easier to read unwrapped

from src.common import code, md, setup

CELLS = [
    md(r"""
    # 1. Neural networks: from layers to a trained classifier

    A **neural network** is a composition of simple functions, *layers*. A fully connected (dense) layer maps
    a vector $x \in \mathbb{R}^{d}$ to

    $$h = \sigma(x W + b), \qquad W \in \mathbb{R}^{d \times m},\ b \in \mathbb{R}^{m},$$

    where $\sigma$ is a nonlinearity applied elementwise (ReLU: $\sigma(z) = \max(0, z)$). A **multilayer
    perceptron** (MLP) stacks such layers and ends with a linear layer whose outputs are *logits* $f(x) \in
    \mathbb{R}^{K}$, one score per class. The softmax turns logits into probabilities,
    $p_k = e^{f_k} / \sum_j e^{f_j}$, and training minimises the **cross-entropy** of the true labels,

    $$L(\theta) = \frac{1}{N} \sum_{i=1}^{N} -\log p_{y_i}(x_i; \theta),$$

    by gradient descent on the parameters $\theta = (W_1, b_1, W_2, b_2, \dots)$.

    In this notebook we build an MLP with `jdl.nn`, look at what each piece computes, write the training loop
    by hand (gradient with `jax.grad`, update with `jdl.optim`), then do the same in one call with
    `jdl.train.fit`, on `mnist_sample`: 5,000 real MNIST digits that ship inside jdl (no download).

    Sources: Goodfellow, Bengio & Courville, *Deep Learning* (MIT Press, 2016), ch. 6 "Deep feedforward
    networks"; Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors" (Nature,
    1986); LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document recognition" (Proc.
    IEEE, 1998) for MNIST.
    """),
    setup("""
    HIDDEN = {"full": 256, "small": 128, "quick": 64}[SIZE]  # hidden units
    EPOCHS = {"full": 30, "small": 10, "quick": 4}[SIZE]
    """),
    code(r"""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import jdl.data
    from jdl import losses, nn, optim, train
    """),
    md(r"""
    ## The data

    `jdl.data.load` returns a `Loader`: the whole split in memory, iterated in shuffled batches. Images are
    `float32` in $[0, 1]$ with shape `(batch, 28, 28, 1)`, labels are `int32` class indices.
    """),
    code(r"""
    train_data = jdl.data.load("mnist_sample", split="train", batch_size=128, shuffle=True, seed=0)
    test_data = jdl.data.load("mnist_sample", split="test", batch_size=1000)
    print(train_data)
    print(test_data)
    batch = next(iter(train_data))
    print("a batch:", batch["image"].shape, batch["image"].dtype, batch["label"].shape, batch["label"].dtype)

    fig, axes = plt.subplots(2, 8, figsize=(10, 3))
    for ax, image, label in zip(axes.flat, batch["image"], batch["label"]):
        ax.imshow(image[..., 0], cmap="gray_r")
        ax.set_title(int(label))
        ax.axis("off")
    fig.suptitle("mnist_sample: the first batch")
    plt.show()
    """),
    md(r"""
    ## One layer

    A jdl layer is a pair of pure functions, `Layer(init, apply)`: `init(key, input_shape)` makes the
    parameters (and state, empty for most layers), `apply(params, state, x)` computes the output. Nothing is
    hidden in objects: parameters are plain dicts of arrays.
    """),
    code(r"""
    dense = nn.Dense(4)
    params, state = dense.init(jax.random.key(0), (1, 3))  # input shape includes the batch dimension
    print({k: v.shape for k, v in params.items()})
    x = jnp.array([[1.0, 2.0, 3.0]])
    y, _ = dense.apply(params, state, x)
    print("x W + b =", y, " by hand:", x @ params["w"] + params["b"])
    """),
    md(r"""
    The nonlinearity is what makes depth useful: without it a stack of dense layers is one linear map.
    Here are the common choices and their derivatives (computed with `jax.grad`).
    """),
    code(r"""
    z = jnp.linspace(-4, 4, 401)
    activations = {"relu": nn.relu, "tanh": nn.tanh, "sigmoid": nn.sigmoid, "gelu": nn.gelu}
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, fn in activations.items():
        ax0.plot(z, fn(z), label=name)
        ax1.plot(z, jax.vmap(jax.grad(fn))(z), label=name)
    ax0.set_title(r"activation $\sigma(z)$")
    ax1.set_title(r"derivative $\sigma'(z)$")
    for ax in (ax0, ax1):
        ax.set_xlabel("z")
        ax.grid(alpha=0.3)
        ax.legend()
    plt.show()
    """),
    md(r"""
    ## The MLP

    `nn.serial` composes layers left to right; plain functions like `nn.relu` count as layers without
    parameters. `Flatten` turns each $28 \times 28 \times 1$ image into a vector of 784 pixels. The parameters
    come out as a nested dict keyed by layer (`dense_0`, `dense_1`).
    """),
    code(r"""
    model = nn.serial(nn.Flatten(), nn.Dense(HIDDEN), nn.relu, nn.Dense(10))
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    print(jax.tree_util.tree_map(jnp.shape, params))
    print("parameters:", nn.count_params(params))

    logits, _ = model.apply(params, state, batch["image"])
    print("logits:", logits.shape)
    print("untrained loss:", float(losses.cross_entropy(logits, batch["label"])), " log(10) =", float(np.log(10)))
    """),
    md(r"""
    The untrained network guesses: its loss is close to $\log 10 \approx 2.30$, the cross-entropy of a uniform
    guess over ten classes.

    ## Training, written out

    One step of gradient descent: compute the loss of a batch and its gradient with respect to every
    parameter (`jax.value_and_grad`), let the optimizer turn the gradient into an update, apply it.
    `jax.jit` compiles the step once; after that each call runs the compiled program. Here the optimizer is
    Adam (Kingma & Ba, 2015; see notebook 3).
    """),
    code(r"""
    optimizer = optim.adam(1e-3)


    def loss_fn(params, images, labels):
        logits, _ = model.apply(params, state, images)
        return losses.cross_entropy(logits, labels)


    @jax.jit
    def step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optim.apply_updates(params, updates), opt_state, loss


    @jax.jit
    def accuracy(params, images, labels):
        logits, _ = model.apply(params, state, images)
        return jnp.mean(jnp.argmax(logits, -1) == labels)


    test = test_data.arrays()
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    params0 = params  # kept, to start fit from the same parameters below
    opt_state = optimizer.init(params)
    step_losses, test_accuracy = [], []
    # A loader remembers where it stands (notebook 6): next(iter(...)) above took a batch, so go back to the start.
    train_data.load_state_dict({**train_data.state_dict(), "epoch": 0, "step": 0})
    for epoch in range(EPOCHS):
        for batch in train_data:  # one epoch, reshuffled each time
            params, opt_state, loss = step(params, opt_state, batch["image"], batch["label"])
            step_losses.append(float(loss))
        test_accuracy.append(float(accuracy(params, test["image"], test["label"])))
        print(f"epoch {epoch + 1}: last batch loss {step_losses[-1]:.3f}, test accuracy {test_accuracy[-1]:.3f}")
    """),
    code(r"""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax0.plot(step_losses, lw=0.8)
    ax0.set_yscale("log")
    ax0.set_xlabel("step")
    ax0.set_ylabel("training loss (batch)")
    ax1.plot(range(1, EPOCHS + 1), test_accuracy, marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    plt.show()
    """),
    md(r"""
    ## The same in one call: `jdl.train.fit`

    `fit` does what the loop above does: given the same starting parameters, the same batches and the same
    updates, so the same numbers (up to float rounding). It also compiles the whole epoch into one program
    when the data fits on the device, and records per-epoch metrics.
    """),
    code(r"""
    result = train.fit(model, losses.cross_entropy, optim.adam(1e-3), train_data, epochs=EPOCHS,
                       eval_data=test_data, seed=0, params=params0, state=state, progress=False)
    gap = max(float(jnp.max(jnp.abs(a - b)))
              for a, b in zip(jax.tree_util.tree_leaves(result.params), jax.tree_util.tree_leaves(params)))
    print(f"largest difference from the loop's parameters: {gap:.2g}")
    for record in result.history[-3:]:
        print({k: round(v, 4) for k, v in record.items() if k in ("epoch", "train_loss", "test_loss", "test_accuracy")})
    print("evaluate:", train.evaluate(model, losses.cross_entropy, result.params, result.state, test_data))
    """),
    md(r"""
    ## What the classifier gets right and wrong

    The confusion matrix counts, for each true digit (row), how often each digit was predicted (column).
    """),
    code(r"""
    logits, _ = model.apply(result.params, result.state, test["image"])
    predicted = np.asarray(jnp.argmax(logits, -1))
    labels = test["label"]
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels, predicted), 1)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1, 1.3]})
    ax0.imshow(confusion, cmap="Blues")
    for i in range(10):
        for j in range(10):
            if confusion[i, j]:
                ax0.text(j, i, confusion[i, j], ha="center", va="center", fontsize=7,
                         color="white" if confusion[i, j] > confusion.max() / 2 else "black")
    ax0.set_xlabel("predicted")
    ax0.set_ylabel("true")
    ax0.set_xticks(range(10))
    ax0.set_yticks(range(10))
    ax0.set_title(f"confusion matrix (accuracy {np.mean(predicted == labels):.3f})")

    wrong = np.flatnonzero(predicted != labels)[:12]
    ax1.axis("off")
    ax1.set_title("some mistakes: true -> predicted")
    for k, i in enumerate(wrong):
        inset = ax1.inset_axes([(k % 6) / 6, 0.5 - (k // 6) * 0.5, 1 / 6.5, 0.45])
        inset.imshow(test["image"][i, ..., 0], cmap="gray_r")
        inset.set_title(f"{labels[i]} -> {predicted[i]}", fontsize=9)
        inset.axis("off")
    plt.show()
    """),
    md(r"""
    ## Takeaway

    * A network is a composition of layers; in jdl each layer is a pair of pure functions `(init, apply)`
      and the parameters are a plain dict, so `jax.grad`, `jax.jit` and `jax.tree_util` work on them directly.
    * Training is three lines repeated: loss and gradient, optimizer update, apply. `jdl.train.fit` runs
      that loop for you, compiled per epoch.
    * A one-hidden-layer MLP reaches about 90% test accuracy on these 4,000 training digits within a few
      epochs, and most of its errors are between digits that look alike.

    Next: notebook 2 looks at gradient descent itself, notebook 5 derives the gradient `jax.grad` computed here.
    """),
]
