"""Pretrained weights for every model family (`model.pretrained=`): a weights name or a file.

A name is resolved by the library the architecture comes from, through its own hub cache
(downloaded when online): torchvision's weights enum (IMAGENET1K_V2, DEFAULT) or a timm tag
(a1_in1k, in12k_ft_in1k; `default`: the architecture's default). A file is read as data only
(`torch.load(weights_only=True)`, or safetensors): a plain state dict, a `{'state_dict': ...}` or
`{'model': ...}` wrapper (an isda-exp run's checkpoint: its `model` and `classifier`), keys with
DDP's `module.` prefix; the authors' released ISDA ImageNet checkpoints load too (their DenseNet
names torchvision's `norm5` and `classifier` `norm_final` and `fc`). A file that holds pickled
objects (the authors' training checkpoints also pickle their loss object) is refused in one line
that says how to extract its weights (`extract_weights`, only with an explicit trust flag).

The weights' classifier becomes the runner's classifier when its shape fits (same feature
dimension and class count), else the classifier stays newly initialised (logged). Any missing or
unexpected key of the feature extractor fails in one line naming the first few: never a silent
partial load. `weights_id` names what was loaded for the science config: the file's SHA-256 or the
library's weights name.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle

import torch
import torch.nn as nn

from ..errors import UserError

log = logging.getLogger("isda_exp")
WRAPPERS = ("state_dict", "model", "net", "module")  # keys that hold the state dict in a wrapper
# the authors' released DenseNets: their names -> torchvision's (features.norm_final, fc)
AUTHORS_DENSENET = (("features.norm_final.", "features.norm5."), ("fc.", "classifier."))
SHOW_KEYS = 4
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's defaults too


def is_file_spec(spec: str) -> bool:
    """A weights file rather than a library's weights name: a path that exists, or has a separator
    or a weights suffix (so a typo in a path is reported as a missing file)."""
    spec = os.path.expanduser(str(spec))
    return os.path.exists(spec) or os.sep in spec or spec.endswith((".pt", ".pth", ".bin", ".safetensors"))


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_id(net: nn.Module, spec) -> str:
    """What `spec` loads, for the science config: 'sha256:<hex>' of a file, else the library's
    full weights name (torchvision:ResNet50_Weights.IMAGENET1K_V2, timm:resnet18.a1_in1k)."""
    if is_file_spec(spec):
        return "sha256:" + sha256(_existing(spec))
    return _hub(net).weights_name(str(spec))


def input_config(net: nn.Module, spec) -> dict | None:
    """The input the weights expect (mean, std, train_crop, eval_resize, eval_crop), or None when
    only the data set's defaults are known (a file for a CIFAR model, no weights)."""
    if hasattr(net, "arch") and hasattr(net.body, "pretrained_cfg"):  # timm: its data config
        from .timm_nets import pretrained_cfg

        tag = None if spec is None or is_file_spec(spec) or str(spec) == "default" else str(spec)
        cfg = pretrained_cfg(net.arch, tag)
        size = int(cfg["input_size"][-1])
        return {"mean": list(cfg.get("mean", IMAGENET_MEAN)), "std": list(cfg.get("std", IMAGENET_STD)),
                "train_crop": size,
                "eval_crop": size, "eval_resize": int(size / float(cfg.get("crop_pct", 0.875)))}
    if spec is not None and not is_file_spec(spec) and hasattr(net, "input_config"):
        return net.input_config(str(spec))
    return None


# ------------------------------------------------------------------ loading


def load_pretrained(net: nn.Module, fc: nn.Linear, spec) -> dict:
    """Load `spec` into the feature extractor (and the classifier where it fits); returns what
    was loaded: {'weights': id, 'classifier': 'loaded' | 'new (...)'}."""
    if is_file_spec(spec):
        path = _existing(spec)
        body, head = split_head(read_weights(path), net)
        source = path
    else:
        body, head = split_head(_hub(net).hub_state_dict(str(spec)), net)
        source = str(spec)
    load_body(net, body, source)
    classifier = load_head(fc, head)
    info = {"weights": weights_id(net, spec), "classifier": classifier}
    log.info(f"pretrained weights {source} ({info['weights'][:20]}...) loaded into "
             f"{type(net).__name__}{'(' + net.arch + ')' if hasattr(net, 'arch') else ''}; "
             f"classifier {classifier}")
    return info


def read_weights(path: str) -> dict:
    """The file's tensors as a state dict (wrappers unwrapped, `module.` prefixes removed), or one
    line naming what is wrong; never unpickles code."""
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return unwrap(load_file(path, device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"model.pretrained={path} is not a readable .safetensors file "
                            f"({str(e).strip()[:120]})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(refusal(path, e)) from None
    except Exception as e:  # not a torch file, truncated: whatever torch.load raised
        raise UserError(f"model.pretrained={path} is not a PyTorch weights file (.pt/.pth of "
                        f"tensors) or a .safetensors file ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:120]})") from None
    return unwrap(obj)


def refusal(path: str, error: Exception) -> str:
    """The one line for a file that holds pickled objects: what was refused and how to extract."""
    found = str(error).split("GLOBAL", 1)[1].split()[0] if "GLOBAL" in str(error) else "a Python object"
    return (f"model.pretrained={path} holds pickled Python objects ({found}; e.g. the authors' "
            "training checkpoints pickle their loss object): weights are read as data only, never "
            "unpickled. If you trust the file, extract its weights once: python -m isda_exp.evaluate "
            f"--extract {path} --out weights.safetensors --trust-pickle, then pass weights.safetensors")


def unwrap(obj) -> dict:
    """The state dict inside `obj` (a wrapper's 'state_dict'/'model'/... entry; an isda-exp
    checkpoint's 'model' + 'classifier'), with DDP's `module.` prefixes removed."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("classifier"), dict):
        # an isda-exp run checkpoint: the feature extractor and the runner's classifier
        state = {**obj["model"], **{f"__classifier__.{k}": v for k, v in obj["classifier"].items()}}
        return _strip_module(state)
    for _ in range(3):  # nested wrappers ({'model': {'state_dict': ...}})
        if isinstance(obj, dict) and not _tensors(obj):
            inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _tensors(obj):
        keys = list(obj)[:SHOW_KEYS] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"the weights file holds no state dict of tensors (top-level keys: {keys}); "
                        "save model.state_dict(), or a dict with it under 'state_dict' or 'model'")
    return _strip_module({k: v for k, v in obj.items() if torch.is_tensor(v)})


def split_head(state: dict, net: nn.Module) -> tuple[dict, dict]:
    """(the feature extractor's state in its own key layout, the classifier's weight/bias)."""
    head = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("__classifier__.")}
    state = {k: v for k, v in state.items() if not k.startswith("__classifier__.")}
    target = net.body if hasattr(net, "body") else net
    if hasattr(net, "body") and any(k.startswith("body.") for k in state):
        state = {k[len("body."):]: v for k, v in state.items()}  # an isda-exp run of this model
    if getattr(net, "arch", "").startswith("densenet") and any(k.startswith("features.norm_final.") for k in state):
        state = _renamed(state, AUTHORS_DENSENET)  # the authors' DenseNet names
    own = set(target.state_dict())
    for name in getattr(net, "head_names", ()):
        prefix = f"{name}."
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k not in own}
        if found:
            head = head or found
            state = {k: v for k, v in state.items() if not (k.startswith(prefix) and k not in own)}
    return state, head


def load_body(net: nn.Module, state: dict, source: str) -> None:
    """All of the feature extractor's keys, or one line naming the first keys that do not fit."""
    target = net.body if hasattr(net, "body") else net
    own = target.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if shapes or missing or unexpected:
        parts = [f"{len(v)} {what}: {', '.join(v[:SHOW_KEYS])}{', ...' if len(v) > SHOW_KEYS else ''}"
                 for what, v in (("of other shapes", shapes), ("missing", missing),
                                 ("unexpected", unexpected)) if v]
        raise UserError(f"the weights {source} do not fit {_describe(net)} ({'; '.join(parts)}): "
                        "pass weights of this architecture (model.arch / model=...)")
    target.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent


def load_head(fc: nn.Linear, head: dict) -> str:
    """The weights' classifier into the runner's when the shapes fit; what happened, in words."""
    weight, bias = head.get("weight"), head.get("bias")
    if weight is None:
        return "new (the weights hold none)"
    if weight.dim() == 4 and weight.shape[2:] == (1, 1):  # a 1x1-convolution classifier
        weight = weight.flatten(1)
    if tuple(weight.shape) != tuple(fc.weight.shape) or (bias is not None and bias.shape != fc.bias.shape):
        return (f"new (the weights' has {weight.shape[0]} classes x {weight.shape[-1]} features, "
                f"the data {fc.out_features} x {fc.in_features})")
    with torch.no_grad():
        fc.weight.copy_(weight)
        if bias is not None:
            fc.bias.copy_(bias)
        else:
            fc.bias.zero_()
    return f"loaded ({weight.shape[0]} classes)"


# ------------------------------------------------------------------ extracting a trusted pickle


def extract_weights(path: str, out: str, trust_pickle: bool = False) -> int:
    """Write the state dict of a checkpoint that pickles objects (the authors' training
    checkpoints) to `out` (.safetensors), unpickling it: only with trust_pickle=True, since
    unpickling can run code. Classes that cannot be imported here (the authors' loss) are
    replaced by inert placeholders. Returns the number of tensors written."""
    if not trust_pickle:
        raise UserError(f"extracting {path} unpickles it, which can run code it holds: add "
                        "--trust-pickle if you trust where the file comes from")
    from safetensors.torch import save_file

    obj = torch.load(_existing(path), map_location="cpu", weights_only=False,
                     pickle_module=_Placeholders)
    state = unwrap(obj)
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, out)
    return len(state)


class _Placeholder:
    """Stands for a pickled object whose class is not importable: keeps its state, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class _PlaceholderUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {"__module__": module})


class _Placeholders:
    """A pickle module for torch.load whose Unpickler stubs classes it cannot import."""

    Unpickler = _PlaceholderUnpickler
    load = staticmethod(lambda f, **kw: _PlaceholderUnpickler(f, **kw).load())
    loads = staticmethod(lambda b, **kw: _PlaceholderUnpickler(io.BytesIO(b), **kw).load())


# ------------------------------------------------------------------ helpers


def _existing(spec) -> str:
    path = os.path.abspath(os.path.expanduser(str(spec)))
    if not os.path.isfile(path):
        raise UserError(f"model.pretrained={spec}: no such file (give a weights file, .pth/.pt/"
                        ".safetensors, or a library weights name such as IMAGENET1K_V2)")
    return path


def _hub(net: nn.Module):
    if not hasattr(net, "hub_state_dict"):
        raise UserError(f"{_describe(net)} has no published weights to name: pass a weights file, "
                        "model.pretrained=FILE (e.g. the last.pt of an earlier run)")
    return net


def _describe(net: nn.Module) -> str:
    return f"{type(net).__name__}({net.arch})" if hasattr(net, "arch") else type(net).__name__


def _tensors(d: dict) -> bool:
    return bool(d) and sum(torch.is_tensor(v) for v in d.values()) >= max(1, len(d) // 2)


def _strip_module(state: dict) -> dict:
    if state and all(k.startswith("module.") or k.startswith("__classifier__.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _renamed(state: dict, renames) -> dict:
    out = {}
    for k, v in state.items():
        for old, new in renames:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out
