"""06 Data loaders: jdl's tfds-backed iterator: transform, batch, shuffle, iterate, prefetch; throughput."""

# ruff: noqa: E501 - markdown tables and formulas are easier to read unwrapped

from src.common import code, md, setup

CELLS = [
    md(r"""
    # 6. Data loaders

    Training reads the data again every epoch, in a new random order, in batches. A data loader does that
    and should never make the accelerator wait. jdl's pipeline:

    ```
    tfds dataset --(prepare once, cache)--> split in host memory --(permutation per epoch)--> batch indices
        --> gather + uint8 -> float32 --> transform (normalize, augment) --> [prefetch to device] --> step
    ```

    With $N$ examples, batch size $B$ and seed $s$, epoch $e$ visits the examples in the order
    $\pi_e = \text{permutation}(s, e)$ and batch $k$ holds $\pi_e[kB : (k+1)B]$: every example once per epoch,
    $\lfloor N/B \rfloor$ batches with `drop_remainder` (the default for training). The order depends on
    $(s, e)$ only, so runs are reproducible and a stopped run resumes exactly.

    `jdl.data.load(name, split=..., batch_size=...)` reads any tensorflow-datasets image classification
    dataset by name (`mnist`, `fashion_mnist`, `cifar10`, ...) and `mnist_sample`, 5,000 MNIST digits that
    ship with jdl. Downloading and preparing a tfds dataset the first time needs a network (and TensorFlow);
    afterwards it is read from the cache, without TensorFlow.

    Sources: TensorFlow Datasets (https://www.tensorflow.org/datasets); Murray et al., "tf.data: a machine
    learning data processing framework" (VLDB, 2021) on pipelining and prefetching; Goodfellow et al., *Deep
    Learning* (2016), §8.1.3 on shuffling mini-batches; He et al., "Deep residual learning for image
    recognition" (CVPR, 2016), §4.2 for crop-and-flip augmentation.
    """),
    setup("""
    DATASET = "mnist" if SIZE == "full" else "mnist_sample"  # full MNIST needs a download (11 MB)
    REPEATS = {"full": 5, "small": 3, "quick": 2}[SIZE]  # epochs per throughput measurement
    """),
    code(r"""
    import time

    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import jdl.data
    from jdl import losses, models, optim
    from jdl.data import transforms
    """),
    md(r"""
    ## Load

    On a GPU/TPU this notebook uses the full MNIST (60,000 training digits), which tfds downloads the first
    time; without a network it falls back to the bundled `mnist_sample` and says so.
    """),
    code(r"""
    try:
        train_data = jdl.data.load(DATASET, split="train", batch_size=128, shuffle=True, seed=0)
    except Exception as error:  # no network, no TensorFlow to prepare it, ...
        print(f"{DATASET} is not available here ({type(error).__name__}: {error}); using mnist_sample instead")
        DATASET = "mnist_sample"
        train_data = jdl.data.load(DATASET, split="train", batch_size=128, shuffle=True, seed=0)
    test_data = jdl.data.load(DATASET, split="test", batch_size=1000)
    print(train_data)
    print(f"{len(train_data)} batches per epoch = {train_data.num_examples} // {train_data.batch_size}")
    print("test split:", len(test_data), "batches; the last one holds",
          test_data.num_examples - (len(test_data) - 1) * test_data.batch_size, "examples (drop_remainder=False)")
    batch = next(iter(train_data))
    print({k: (v.shape, v.dtype, float(v.min()), float(v.max())) for k, v in batch.items()})
    """),
    md(r"""
    ## Shuffle and iterate

    Iterating a loader yields the rest of its current epoch (all of it for a fresh loader; `next(iter(loader))`
    above took the first batch); iterating again yields the next epoch, reshuffled. `loader.positions()`
    shows the example indices behind each batch. Below: which examples the first batches of three epochs
    hold, and a check that every epoch visits every example exactly once.
    """),
    code(r"""
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for epoch in range(3):
        order = train_data.permutation(epoch)
        assert np.array_equal(np.sort(order), np.arange(train_data.num_examples))  # a permutation
        for k in range(4):
            indices = order[k * 128 : (k + 1) * 128]
            ax.plot(indices, np.full(128, epoch * 5 + k), "|", ms=8, color=f"C{epoch}")
    ax.set_yticks([epoch * 5 + 1.5 for epoch in range(3)], [f"epoch {e}" for e in range(3)])
    ax.set_xlabel("example index")
    ax.set_title("the examples in batches 0-3 of each epoch (one row per batch)")
    plt.show()

    train_data.load_state_dict({**train_data.state_dict(), "epoch": 0, "step": 0})  # a whole epoch, from its start
    seen = np.concatenate([indices for _, _, indices in train_data.positions()])
    dropped = train_data.num_examples - len(seen)
    print(f"one epoch: {len(seen)} examples, all distinct: {len(set(seen)) == len(seen)}; "
          f"{dropped} left out by drop_remainder, different ones each epoch")
    """),
    md(r"""
    ### Saving and restoring the position

    `state_dict()` is the loader's position (`epoch`, `step`, `seed`, and the `batch_size`, `num_examples` and
    `shuffle` that say what a step is); a new loader like it, given the position, continues with exactly the
    next batch, and a loader with another batch size refuses it (its step would name other examples). This is
    what makes checkpointed training resume bit for bit.
    """),
    code(r"""
    loader = jdl.data.load(DATASET, split="train", batch_size=128, shuffle=True, seed=0)
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    position = loader.state_dict()
    expected = next(iterator)

    resumed = jdl.data.load(DATASET, split="train", batch_size=128, shuffle=True, seed=0)
    resumed.load_state_dict(position)
    print("position:", position, "-> same next batch:", np.array_equal(next(iter(resumed))["image"], expected["image"]))
    """),
    md(r"""
    ## Transform

    A transform maps a batch dict to a batch dict. Deterministic ones (`normalize`, `one_hot`) ignore
    randomness; random augmentations (`random_crop`, `random_flip`) get a NumPy generator that the loader
    derives from `(seed, epoch, step)`, so augmentation is reproducible too. `compose` chains them.
    Normalising to zero mean and unit variance per channel, $x \leftarrow (x - \mu)/\sigma$, helps
    optimisation; random crops (pad by $p$ pixels, cut a window of the original size) teach small shift
    invariance. Horizontal flips suit natural images (CIFAR), not digits.
    """),
    code(r"""
    mean, std = transforms.MEAN_STD[DATASET]
    augment = transforms.compose(transforms.random_crop(3), transforms.normalize(mean, std))
    augmented = jdl.data.load(DATASET, split="train", batch_size=128, shuffle=True, seed=0, transform=augment)
    b = next(iter(augmented))
    print(f"normalized batch: mean {b['image'].mean():.3f}, std {b['image'].std():.3f}")

    digit = {"image": np.repeat(batch["image"][:1], 8, axis=0), "label": np.repeat(batch["label"][:1], 8)}
    rng = np.random.default_rng(0)
    crops = transforms.random_crop(3)(digit, rng)["image"]
    flips = transforms.random_flip()(digit, rng)["image"]
    fig, axes = plt.subplots(2, 8, figsize=(11, 3.2))
    for k in range(8):
        axes[0, k].imshow(crops[k, ..., 0], cmap="gray_r")
        axes[1, k].imshow(flips[k, ..., 0], cmap="gray_r")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("random_crop(3)")
    axes[1, 0].set_ylabel("random_flip()")
    plt.show()
    """),
    md(r"""
    The same augmentation also runs on the accelerator inside a jitted step, with an explicit JAX key:
    `transforms.random_crop_device(key, images, padding)` and `random_flip_device(key, images)`.
    """),
    code(r"""
    crop_on_device = jax.jit(transforms.random_crop_device, static_argnums=2)
    on_device = crop_on_device(jax.random.key(0), jnp.asarray(batch["image"]), 3)
    print(type(on_device).__name__, on_device.shape, on_device.dtype)
    """),
    md(r"""
    ## Prefetch

    `prefetch_to_device(loader, size=2)` moves batches to the accelerator in a background thread, `size`
    transfers ahead of the consumer (double buffering), so the host prepares batch $t+1$ while the device
    computes on batch $t$. Its batches are already `jax.Array`s on the device.
    """),
    code(r"""
    with jdl.data.prefetch_to_device(train_data, size=2) as batches:
        first = next(batches)
    print({k: (type(v).__name__, v.shape, str(v.device)) for k, v in first.items()})
    """),
    md(r"""
    ## Throughput

    How many examples per second each way of feeding delivers (a few epochs each, after a warm-up):

    * **host**: iterate the loader (NumPy batches);
    * **host + transform**: with `random_crop` and `normalize`;
    * **prefetch**: `prefetch_to_device`;
    * **on device**: the whole split on the accelerator once (`loader.arrays()`), batches gathered there
      with the loader's permutation (what `jdl.train.fit` and `jdl.compare` do when the data fits).

    and then how fast a small training step runs when fed each way. On a CPU there is no transfer to hide, so
    prefetching has nothing to win; on a GPU it is the difference between a busy and an idle device.
    """),
    code(r"""
    def examples_per_second(make_batches, repeats=REPEATS, consume=lambda b: b["label"]):
        warm_up = make_batches()
        jax.block_until_ready(consume(next(iter(warm_up))))  # compilation, caches
        if hasattr(warm_up, "close"):
            warm_up.close()  # stop a prefetcher's thread before timing
        count, start = 0, time.perf_counter()
        for _ in range(repeats):
            last = None
            for b in make_batches():
                last = consume(b)
                count += len(b["label"])
            jax.block_until_ready(last)
        return count / (time.perf_counter() - start)


    arrays = train_data.arrays()
    device_images, device_labels = jnp.asarray(arrays["image"]), jnp.asarray(arrays["label"])
    gather = jax.jit(lambda idx: {"image": device_images[idx], "label": device_labels[idx]})


    def on_device_batches(loader=train_data):
        # One epoch's batches gathered on the device, in the loader's order for that epoch (its
        # permutation); the loader is moved on to the next epoch, as iterating it would.
        epoch = loader.epoch
        loader.load_state_dict({"epoch": epoch + 1, "step": 0, "seed": loader.seed})
        order = jnp.asarray(loader.permutation(epoch))
        return (gather(order[k * loader.batch_size : (k + 1) * loader.batch_size]) for k in range(len(loader)))


    feeds = {
        "host": lambda: train_data,
        "host + transform": lambda: augmented,
        "prefetch": lambda: jdl.data.prefetch_to_device(train_data, size=2),
        "on device": on_device_batches,
    }
    rates = {name: examples_per_second(make) for name, make in feeds.items()}
    for name, rate in rates.items():
        print(f"{name:18s} {rate:12,.0f} examples/s")
    """),
    code(r"""
    model = models.mlp()
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    optimizer = optim.adam(1e-3)
    opt_state = optimizer.init(params)


    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            return losses.cross_entropy(model.apply(p, state, images)[0], labels)

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optim.apply_updates(params, updates), opt_state


    def train_consumer():
        holder = [params, opt_state]

        def consume(b):
            holder[0], holder[1] = step(holder[0], holder[1], b["image"], b["label"])
            return holder[0]

        return consume


    training = {name: examples_per_second(make, consume=train_consumer()) for name, make in feeds.items()}
    batch_sizes = [32, 128, 512]
    by_batch_size = []
    for size in batch_sizes:
        loader = jdl.data.load(DATASET, split="train", batch_size=size, shuffle=True, seed=0)
        by_batch_size.append(examples_per_second(lambda loader=loader: loader))

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4))
    x = np.arange(len(feeds))
    ax0.bar(x - 0.2, list(rates.values()), 0.4, label="loading only")
    ax0.bar(x + 0.2, list(training.values()), 0.4, label="loading + MLP training step")
    ax0.set_xticks(x, list(feeds))
    ax0.set_yscale("log")
    ax0.set_ylabel("examples / s")
    ax0.set_title(f"{DATASET}, batch 128, {jax.devices()[0].platform}")
    ax0.legend()
    ax1.plot(batch_sizes, by_batch_size, marker="o")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("examples / s")
    ax1.set_title("host iteration: per-batch overhead amortised over larger batches")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3, which="both")
    plt.show()
    for name in feeds:
        print(f"{name:18s} training: {training[name]:10,.0f} examples/s")
    """),
    md(r"""
    ## Takeaway

    * `jdl.data.load` gives a `Loader`: the split in host memory, shuffled per epoch by a permutation that
      depends on `(seed, epoch)` alone; batches of `{'image', 'label'}` NumPy arrays.
    * Transforms are plain functions of a batch (and a generator for random ones): composable, reproducible.
    * The position is a small dict (`state_dict()`), so training resumes exactly.
    * Keep the accelerator fed: prefetch batches to the device, or, for small datasets like MNIST, keep the
      whole split on the device and gather batches there (no transfer per step at all). On a CPU the
      "device" is the host: prefetching only adds a thread competing for the same cores, while gathering
      batches from the resident split still saves a copy per step. (The few batches timed above make the
      rates noisy: compare them as rough figures.)
    """),
]
