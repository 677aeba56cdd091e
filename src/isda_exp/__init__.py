"""isda-exp: reproduce and extend the CIFAR results of Implicit Semantic Data Augmentation."""

__version__ = "0.1.0"
