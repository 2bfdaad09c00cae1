"""A persistent compilation cache: programs compiled once are loaded, not
compiled again, by later calls and later processes.

JAX keeps compiled programs on disk when ``jax_compilation_cache_dir`` is set,
keyed by the program and the compiler's version and options, but by default
only those that took over a second to compile; ``fit`` compiles several small
programs (initialization, the epoch, evaluation, the finiteness check), each
well under that.  ``enable_compilation_cache`` caches them all.  It sets
process-wide JAX options, so the library never calls it on its own; the
``jdl`` command line does (``--no-compilation-cache`` turns it off).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache.compilation_cache import reset_cache

__all__ = ["default_cache_dir", "disable_compilation_cache", "enable_compilation_cache"]


def default_cache_dir() -> Path:
    """``$JDL_CACHE_DIR``, else ``$XDG_CACHE_HOME/jdl/xla``, else ``~/.cache/jdl/xla``."""
    if os.environ.get("JDL_CACHE_DIR"):
        return Path(os.environ["JDL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jdl" / "xla"


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Keep every compiled program in ``directory`` (default
    ``default_cache_dir()``) and load it from there when the same program is
    compiled again; returns the directory.  Raises ``ValueError`` when it cannot
    be created or written."""
    path = Path(directory) if directory is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".jdl-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"enable_compilation_cache: cannot write to {path}: {error}") from error
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    reset_cache()  # JAX opens its cache once per process: a folder set after that would go unused
    return path


def disable_compilation_cache() -> None:
    """Compile everything afresh again (undoes ``enable_compilation_cache``)."""
    jax.config.update("jax_compilation_cache_dir", None)
    reset_cache()
