"""The parameter-golf artifact: int8 per-row weights, small tensors in fp16, zlib; its size, and a model loaded back.

Each 2-D floating-point tensor with more than `keep_float_max_numel` elements (parameter-golf: 65,536) is stored as
int8 rows q = round(clip(w) / scale) in [-127, 127] with one fp16 scale per row, scale = clip / 127, clip = the
99.99984th percentile of the row's |w| (parameter-golf's INT8_CLIP_Q, in practice the row maximum). Every other
floating-point tensor is stored in fp16, and integer buffers as they are. The tensors are written with safetensors
(never pickle), the bytes compressed with zlib at level 9, and the artifact's size is the size of that file.

One deliberate difference: parameter-golf floors the scale at 1/127, a step of 0.0079 for every row whose largest
weight is below 1, which at small widths wipes out most of a row; we floor it only to avoid dividing by zero
(`min_scale` restores the original behaviour).

`load_quantized` dequantizes into the original dtypes and writes a folder that `from_pretrained` loads, so the
dequantized model is evaluated with the same code as the original (the seed reported its score before quantization
only).
"""

import json
import shutil
import zlib
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from safetensors.torch import save_file

CLIP_QUANTILE = 0.9999984
PARAMETER_GOLF_KEEP_FLOAT_MAX_NUMEL = 65_536
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")


def quantize_tensor(tensor: torch.Tensor, min_scale: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D float tensor -> (int8 rows, fp16 per-row scales)."""
    weights = tensor.detach().float()
    clip = torch.quantile(weights.abs(), CLIP_QUANTILE, dim=1) if weights.shape[1] > 1 else weights.abs()[:, 0]
    scale = (clip / 127).clamp(min=max(min_scale, torch.finfo(torch.float16).tiny)).to(torch.float16)
    scale32 = scale.float()[:, None]
    q = torch.round(weights.clamp(-clip[:, None], clip[:, None]) / scale32).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_state_dict(state_dict: dict[str, torch.Tensor],
                        keep_float_max_numel: int = PARAMETER_GOLF_KEEP_FLOAT_MAX_NUMEL,
                        min_scale: float = 0.0) -> dict[str, dict]:
    """name -> {"q", "scale", "dtype"} for int8 tensors, {"tensor", "dtype"} for the rest (fp16 if floating)."""
    quantized = {}
    for name, tensor in state_dict.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tensor.is_floating_point() and tensor.dim() == 2 and tensor.numel() > keep_float_max_numel:
            q, scale = quantize_tensor(tensor, min_scale)
            quantized[name] = dict(q=q, scale=scale, dtype=dtype)
        elif tensor.is_floating_point():
            quantized[name] = dict(tensor=tensor.detach().to(torch.float16), dtype=dtype)
        else:
            quantized[name] = dict(tensor=tensor.detach(), dtype=dtype)
    return quantized


def dequantize_state_dict(quantized: dict[str, dict]) -> dict[str, torch.Tensor]:
    restored = {}
    for name, entry in quantized.items():
        dtype = getattr(torch, entry["dtype"])
        if "q" in entry:
            restored[name] = (entry["q"].float() * entry["scale"].float()[:, None]).to(dtype)
        else:
            restored[name] = entry["tensor"].to(dtype)
    return restored


def unique_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's state dict with each shared tensor once (a tied output head is the embedding)."""
    seen, unique = set(), {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        unique[name] = tensor
    return unique


def to_bytes(quantized: dict[str, dict]) -> bytes:
    tensors, dtypes = {}, {}
    for name, entry in quantized.items():
        dtypes[name] = entry["dtype"]
        if "q" in entry:
            tensors[f"{name}.q"], tensors[f"{name}.scale"] = entry["q"].contiguous(), entry["scale"].contiguous()
        else:
            tensors[name] = entry["tensor"].contiguous()
    return zlib.compress(save_safetensors_bytes(tensors, metadata={"dtypes": json.dumps(dtypes)}), level=9)


def from_bytes(data: bytes) -> dict[str, dict]:
    raw = zlib.decompress(data)
    tensors = load_safetensors_bytes(raw)
    header_length = int.from_bytes(raw[:8], "little")
    dtypes = json.loads(json.loads(raw[8:8 + header_length])["__metadata__"]["dtypes"])
    quantized = {}
    for name, dtype in dtypes.items():
        if f"{name}.q" in tensors:
            quantized[name] = dict(q=tensors[f"{name}.q"], scale=tensors[f"{name}.scale"], dtype=dtype)
        else:
            quantized[name] = dict(tensor=tensors[name], dtype=dtype)
    return quantized


def save_quantized(model, path: str | Path, keep_float_max_numel: int = PARAMETER_GOLF_KEEP_FLOAT_MAX_NUMEL,
                   min_scale: float = 0.0) -> int:
    """Write the compressed artifact of `model`'s weights to `path`; returns its size in bytes."""
    data = to_bytes(quantize_state_dict(unique_state_dict(model), keep_float_max_numel, min_scale))
    Path(path).write_bytes(data)
    return len(data)


def load_quantized(path: str | Path, model_folder: str | Path, output_folder: str | Path) -> Path:
    """Dequantize the artifact at `path` into `output_folder`: the files of `model_folder` (config, code, tokenizer)
    with the dequantized weights in place of its own. Returns the folder, ready for from_pretrained."""
    model_folder, output_folder = Path(model_folder), Path(output_folder)
    if output_folder.exists():
        raise FileExistsError(f"{output_folder} already exists; choose a new folder for the dequantized model")
    shutil.copytree(model_folder, output_folder, ignore=shutil.ignore_patterns(*WEIGHTS_FILES, "checkpoint-*"))
    state_dict = dequantize_state_dict(from_bytes(Path(path).read_bytes()))
    save_file({name: tensor.contiguous() for name, tensor in state_dict.items()},
              output_folder / "model.safetensors", metadata={"format": "pt"})
    return output_folder
