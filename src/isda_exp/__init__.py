"""isda-exp: reproduce and extend the CIFAR results of Implicit Semantic Data Augmentation."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """${method_dir:isda_name,model,drop_rate}: the run directory's method part (identity.dir_label)."""
    from omegaconf import OmegaConf

    from .identity import dir_label

    if not OmegaConf.has_resolver("method_dir"):
        OmegaConf.register_new_resolver("method_dir", dir_label)


_register_resolvers()
