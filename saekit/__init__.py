"""saekit: sparse dictionary learning on neural-network activations."""

from saekit.sae import SAE, SAEConfig, architectures, create, get_architecture

__version__ = "0.1.0"

__all__ = ["SAE", "SAEConfig", "architectures", "create", "get_architecture", "__version__"]
