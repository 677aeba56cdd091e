"""Any timm architecture as the feature extractor (`model=timm model.arch=NAME`).

timm builds the network with num_classes=0, so its forward returns the pooled features
[N, num_features] and the runner keeps its own Linear classifier (ISDA needs the features /
classifier split). Pretrained weights and the input each architecture expects (mean, std, size,
crop fraction) come from timm's pretrained config; see isda_exp.models.pretrained.
"""
from __future__ import annotations

import difflib

import torch
import torch.nn as nn

from ..errors import UserError
from ._registry import register_model


def timm_module():
    """timm, imported on first use (a CIFAR run never needs it), or one line saying how to get it."""
    try:
        import timm
    except ImportError:
        raise UserError("model=timm needs the timm package: pip install timm (make install "
                        "installs the tested version)") from None
    return timm


def check_arch(arch: str, tag: str | None = None) -> str:
    """`arch` (or `arch.tag`) if timm knows it, else one line with the closest names."""
    timm = timm_module()
    name = f"{arch}.{tag}" if tag else str(arch)
    if not timm.is_model(str(arch)):
        close = difflib.get_close_matches(str(arch), timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"model.arch={arch} is not a timm architecture{hint}: "
                        "python -c \"import timm; print(timm.list_models('*resnet*'))\" lists them")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        raise UserError(f"model.pretrained={tag} is not a timm weights tag of {arch}: use one of "
                        f"{', '.join(tags[:8]) or 'none (it has no published weights)'}, or a file")
    return name


def pretrained_cfg(arch: str, tag: str | None = None) -> dict:
    """timm's pretrained config of `arch` (its default tag, or `tag`): input size, mean, std,
    crop fraction, the classifier's name."""
    return timm_module().get_pretrained_cfg(check_arch(arch, tag)).to_dict()


class TimmFeatures(nn.Module):
    """A timm model built without its classifier: forward returns the pooled features."""

    def __init__(self, arch: str, **kwargs):
        super().__init__()
        timm = timm_module()
        check_arch(arch)
        self.arch = str(arch)
        self.body = timm.create_model(self.arch, pretrained=False, num_classes=0, **kwargs)
        self.feature_dim = int(self.body.num_features)
        cfg = self.body.pretrained_cfg or {}
        self.input_size = int(cfg.get("input_size", (3, 224, 224))[-1])  # FLOP estimates use it
        head = cfg.get("classifier") or "fc"
        # the classifier's names in a full timm checkpoint (a distilled model has two heads)
        self.head_names = tuple(head) if isinstance(head, (tuple, list)) else (head,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def hub_state_dict(self, tag: str) -> dict:
        """The body's weights of timm's `arch.tag` ("default": the architecture's default tag),
        through timm's hub cache (downloaded when online)."""
        name = check_arch(self.arch, None if tag == "default" else tag)
        try:
            return timm_module().create_model(name, pretrained=True, num_classes=0).state_dict()
        except (OSError, RuntimeError, ValueError) as e:  # offline, no such file on the hub
            raise UserError(f"cannot get timm's weights {name} ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0][:160]}); without network, download "
                            "them elsewhere and pass the file: model.pretrained=FILE") from None

    def weights_name(self, tag: str) -> str:
        """timm:ARCH.TAG, the default tag spelled out (it may change between timm versions)."""
        if tag == "default":
            tag = pretrained_cfg(self.arch).get("tag") or None
        return "timm:" + check_arch(self.arch, tag)


@register_model
def timm(arch: str = "resnet18", **kwargs) -> TimmFeatures:
    """Any timm architecture, `arch` as timm names it (resnet18, convnext_nano, efficientnet_b0,
    vit_tiny_patch16_224, ...); kwargs go to timm.create_model (drop_rate, drop_path_rate)."""
    return TimmFeatures(arch, **kwargs)
