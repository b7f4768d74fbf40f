"""saekit: sparse dictionary learning on neural-network activations."""

__version__ = "0.1.0"

_LAZY = {"SAE", "SAEConfig", "architectures", "create", "get_architecture"}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str):
    # Lazy, so that `saekit --help` and argument errors answer without importing torch.
    if name in _LAZY:
        import saekit.sae

        return getattr(saekit.sae, name)
    raise AttributeError(f"module 'saekit' has no attribute {name!r}")
