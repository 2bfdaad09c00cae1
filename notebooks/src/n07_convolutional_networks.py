"""07 Convolutional networks: a CNN on Fashion-MNIST (or mnist_sample offline); filters, feature maps, vs the MLP."""

# ruff: noqa: E501 - markdown tables and formulas are easier to read unwrapped

from src.common import code, md, setup

CELLS = [
    md(r"""
    # 7. Convolutional neural networks

    An MLP treats an image as a list of unrelated pixels. A **convolutional layer** instead slides small
    filters over the image: every output pixel sees only a $k \times k$ neighbourhood, and the same filter
    weights are used at every position. For an input $x$ with $C$ channels and $F$ filters $w \in
    \mathbb{R}^{k \times k \times C \times F}$ (HWIO), at stride 1,

    $$y_{i,j,f} = b_f + \sum_{u=0}^{k-1}\sum_{v=0}^{k-1}\sum_{c=1}^{C} x_{i+u-p,\,j+v-p,\,c}\; w_{u,v,c,f},$$

    with the input padded by $p$ zeros on each side. (Strictly a cross-correlation; deep-learning libraries
    call it convolution.) An input of size $n$ gives an output of size $\lfloor (n + 2p - k)/s \rfloor + 1$
    for a stride $s$: with $p = 0$ ("VALID") a $3 \times 3$ filter turns 28 into 26; `nn.Conv`'s default
    "SAME" padding, $p = \lfloor k/2 \rfloor = 1$ here, keeps 28. Two consequences: far fewer parameters
    than a dense layer on the same image (a $3\times3$ filter bank from 32 to 64 channels has
    $3 \cdot 3 \cdot 32 \cdot 64 + 64 = 18{,}496$ parameters, whatever the image size), and **translation
    equivariance**: a pattern is detected wherever it appears. **Pooling** (average or max over $2 \times 2$
    windows, stride 2: the same rule with $k = s = 2$, $p = 0$) then halves the resolution, so deeper layers
    see larger regions. The network here is the CNN of the flax MNIST example (`jdl.models.cnn()`):

    `conv 32 3x3 -> relu -> avgpool 2x2 -> conv 64 3x3 -> relu -> avgpool 2x2 -> dense 256 -> relu -> dense 10`

    Its shapes: $28 \times 28 \times 1 \to 28 \times 28 \times 32 \to 14 \times 14 \times 32 \to 14 \times 14
    \times 64 \to 7 \times 7 \times 64$, flattened to $3{,}136$ values, then 256 and 10. The dense layer after
    the flatten holds $3{,}136 \cdot 256 + 256 = 803{,}072$ of the network's $824{,}458$ parameters (97%):
    the convolutions themselves are cheap in parameters, not in computation.

    Sources: LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document recognition" (Proc.
    IEEE, 1998); Goodfellow et al., *Deep Learning* (2016), ch. 9; Xiao, Rasul & Vollgraf, "Fashion-MNIST: a
    novel image dataset for benchmarking machine learning algorithms" (arXiv:1708.07747, 2017); Zeiler & Fergus,
    "Visualizing and understanding convolutional networks" (ECCV, 2014).
    """),
    setup("""
    N_TRAIN = {"full": None, "small": 12000, "quick": 4000}[SIZE]  # training examples (None: all 60,000)
    N_TEST = {"full": None, "small": 5000, "quick": 1000}[SIZE]
    EPOCHS = {"full": 10, "small": 4, "quick": 3}[SIZE]
    """),
    code(r"""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import jdl.data
    from jdl import losses, models, nn, optim, train
    """),
    md(r"""
    ## The data: Fashion-MNIST

    70,000 grey $28 \times 28$ images of ten kinds of clothing, harder than digits. tfds downloads it (30 MB)
    the first time; where the original files are already on disk (Debian's `dataset-fashion-mnist` package puts
    them in `/usr/share/datasets/fashion-mnist`) they are used instead (`manual_dir`). Preparing it the first
    time needs TensorFlow (Colab has it). Without either, this notebook falls back to the bundled
    `mnist_sample` digits and says so. On a CPU it trains on a subset to stay quick.
    """),
    code(r"""
    MANUAL_DIR = "/usr/share/datasets/fashion-mnist"
    manual_dir = MANUAL_DIR if os.path.isdir(MANUAL_DIR) else None
    try:
        full_train = jdl.data.load("fashion_mnist", split="train", batch_size=128, manual_dir=manual_dir)
        full_test = jdl.data.load("fashion_mnist", split="test", batch_size=1000, manual_dir=manual_dir)
        DATASET = "fashion_mnist"
    except Exception as error:  # no network and no local copy, or no TensorFlow to prepare it
        print(f"Fashion-MNIST is not available here ({type(error).__name__}: {error});\n"
              "falling back to the bundled mnist_sample digits.")
        full_train = jdl.data.load("mnist_sample", split="train", batch_size=128)
        full_test = jdl.data.load("mnist_sample", split="test", batch_size=1000)
        DATASET = "mnist_sample"
    CLASSES = full_train.class_names or tuple(str(k) for k in range(full_train.num_classes))


    def subset(loader, n, **kwargs):
        # the first n examples of a loaded split as a new Loader (jdl.data.Loader takes any arrays)
        images, labels = loader.stored()  # uint8 images as stored, int32 labels
        return jdl.data.Loader(images[:n], labels[:n], num_classes=loader.num_classes, name=loader.name,
                               split=loader.split, class_names=loader.class_names, **kwargs)


    train_data = subset(full_train, N_TRAIN, batch_size=128, shuffle=True, seed=0)
    test_data = subset(full_test, N_TEST, batch_size=1000, shuffle=False, drop_remainder=False)
    print(f"{DATASET}: training on {train_data.num_examples} of {full_train.num_examples}, "
          f"testing on {test_data.num_examples} of {full_test.num_examples}")
    print("classes:", CLASSES)

    sample = train_data.arrays()
    fig, axes = plt.subplots(2, 8, figsize=(11, 3.3))
    for ax, image, label in zip(axes.flat, sample["image"], sample["label"]):
        ax.imshow(image[..., 0], cmap="gray_r")
        ax.set_title(CLASSES[label], fontsize=8)
        ax.axis("off")
    plt.show()
    """),
    md(r"""
    ## What one filter does

    Before training anything: a convolution with a hand-made filter. The Sobel filters respond to horizontal
    and vertical intensity changes, i.e. edges. Here they are the weights of a jdl `nn.Conv(2, (3, 3))`.
    """),
    code(r"""
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    conv = nn.Conv(2, (3, 3))
    conv_params, _ = conv.init(jax.random.key(0), (1, 28, 28, 1))
    print({k: v.shape for k, v in conv_params.items()}, "(kernel height, width, in channels, out channels)")
    conv_params = {"w": jnp.stack([sobel_x, sobel_x.T], -1)[:, :, None, :], "b": jnp.zeros(2)}
    edges, _ = conv.apply(conv_params, {}, sample["image"][:1])

    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, image, title in zip(axes, [sample["image"][0, ..., 0], edges[0, ..., 0], edges[0, ..., 1]],
                                ["input", "vertical edges (Sobel x)", "horizontal edges (Sobel y)"]):
        ax.imshow(image, cmap="gray_r" if title == "input" else "RdBu")
        ax.set_title(title)
        ax.axis("off")
    plt.show()
    """),
    md(r"""
    ## Train the CNN, and the MLP for comparison

    Both with Adam ($\eta = 10^{-3}$), batch 128, the same epochs and data. On a CPU a step of the CNN takes
    tens of milliseconds (an MLP step about one), hence the subset.
    """),
    code(r"""
    cnn, mlp = models.cnn(train_data.num_classes), models.mlp(train_data.num_classes, hidden=(256,))
    results = {}
    for name, model in {"CNN": cnn, "MLP": mlp}.items():
        results[name] = train.fit(model, losses.cross_entropy, optim.adam(1e-3), train_data, epochs=EPOCHS,
                                  eval_data=test_data, seed=0, progress=False)
        last = results[name].history[-1]
        print(f"{name}: {nn.count_params(results[name].params):,} parameters, test accuracy "
              f"{last['test_accuracy']:.3f}, {sum(h['time_s'] for h in results[name].history):.1f} s training")

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
    for color, (name, result) in zip(("C0", "C1"), results.items()):  # one colour per model in both panels
        epochs = [h["epoch"] for h in result.history]
        ax0.plot(epochs, [h["train_loss"] for h in result.history], marker="o", color=color, label=f"{name} train")
        ax0.plot(epochs, [h["test_loss"] for h in result.history], marker="s", ls="--", color=color,
                 label=f"{name} test")
        ax1.plot(epochs, [h["test_accuracy"] for h in result.history], marker="o", color=color, label=name)
    ax0.set_ylabel("loss")
    ax1.set_ylabel("test accuracy")
    for ax in (ax0, ax1):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{DATASET}: CNN against MLP")
    plt.show()
    """),
    md(r"""
    The training loss can lie above the test loss early on: it is the mean over the epoch's batches while the
    model was still learning, whereas the test loss is measured once, with the parameters at the epoch's end.

    ## The learned filters

    The 32 first-layer filters ($3 \times 3$ weights each, blue negative, red positive). Look for a light
    side against a dark side: an edge detector like the Sobel filters above, learned from data. After a short
    run on a CPU many filters are still close to their random start; full training sharpens them.
    """),
    code(r"""
    params = results["CNN"].params
    filters = np.asarray(params["conv_0"]["w"])[:, :, 0, :]  # (3, 3, 32)
    limit = np.abs(filters).max()
    fig, axes = plt.subplots(4, 8, figsize=(9, 4.8))
    for k, ax in enumerate(axes.flat):
        ax.imshow(filters[:, :, k], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("first convolution layer: 32 learned 3x3 filters")
    plt.show()
    """),
    md(r"""
    ## Feature maps

    What the layers compute on one test image: the outputs of the first convolution (after ReLU, 32 maps of
    $28 \times 28$) and of the second (64 maps of $14 \times 14$, the first 16 shown). Sub-networks built
    with `nn.serial` from the first layers reuse the trained parameters, since `serial` names the layers
    the same way (`conv_0`, `conv_1`).
    """),
    code(r"""
    first = nn.serial(nn.Conv(32, (3, 3)), nn.relu)
    second = nn.serial(nn.Conv(32, (3, 3)), nn.relu, nn.AvgPool((2, 2), strides=(2, 2)), nn.Conv(64, (3, 3)), nn.relu)
    image = test_data.arrays()["image"][:1]
    maps1, _ = first.apply({"conv_0": params["conv_0"]}, {}, image)
    maps2, _ = second.apply({"conv_0": params["conv_0"], "conv_1": params["conv_1"]}, {}, image)

    fig = plt.figure(figsize=(13, 6))
    grid = fig.add_gridspec(4, 13)
    ax = fig.add_subplot(grid[1:3, 0:2])
    ax.imshow(image[0, ..., 0], cmap="gray_r")
    ax.set_title("input")
    ax.axis("off")
    for k in range(16):
        ax = fig.add_subplot(grid[k // 4, 2 + k % 4])
        ax.imshow(maps1[0, ..., k], cmap="viridis")
        ax.axis("off")
        ax = fig.add_subplot(grid[k // 4, 7 + k % 4])
        ax.imshow(maps2[0, ..., k], cmap="viridis")
        ax.axis("off")
    fig.text(0.33, 0.93, "conv 1 + relu (16 of 32), 28x28", ha="center")
    fig.text(0.68, 0.93, "conv 2 + relu (16 of 64), 14x14", ha="center")
    plt.show()
    """),
    md(r"""
    ## Predictions
    """),
    code(r"""
    test = test_data.arrays()
    logits, _ = cnn.apply(params, results["CNN"].state, test["image"][:16])
    probabilities = jax.nn.softmax(logits)
    fig, axes = plt.subplots(2, 8, figsize=(13, 3.8))
    for k, ax in enumerate(axes.flat):
        guess = int(jnp.argmax(probabilities[k]))
        ax.imshow(test["image"][k, ..., 0], cmap="gray_r")
        ax.set_title(f"{CLASSES[guess]} {float(probabilities[k, guess]):.0%}", fontsize=8,
                     color="green" if guess == test["label"][k] else "red")
        ax.axis("off")
    fig.suptitle("CNN predictions on test images (red: wrong)")
    plt.show()

    names = list(results)
    accuracy = [results[n].history[-1]["test_accuracy"] for n in names]
    counts = [nn.count_params(results[n].params) for n in names]
    for n, a, c in zip(names, accuracy, counts):
        print(f"{n}: test accuracy {a:.3f} with {c:,} parameters")
    """),
    md(r"""
    ## Takeaway

    * A convolution shares a small filter across the image: few parameters, and the same pattern detected
      anywhere. Pooling trades resolution for a wider view.
    * The first layer learns edge- and blob-like filters; deeper feature maps respond to larger parts.
    * With the same optimizer and budget the CNN beats the MLP on Fashion-MNIST (typically around 91% against
      88% after ten full epochs of Fashion-MNIST; the smaller run above gives its own numbers), with
      more parameters and much more computation per example.
    """),
    md(r"""
    ## Exercises

    1. Work out the shapes and the parameter count of the same CNN with `padding="VALID"` in both
       convolutions (`nn.Conv(32, (3, 3), padding="VALID")`, ...). Build it with `nn.serial` and check your
       answer with `nn.count_params`.
    2. Replace both average pools by max pools (`nn.MaxPool((2, 2), strides=(2, 2))`) and compare the test
       accuracy after the same training.
    3. Replace the flatten by a mean over the $7 \times 7$ positions (global average pooling). How many
       parameters are left, and what happens to the accuracy?
    """),
]
