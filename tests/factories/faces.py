"""DeepFace emotion weights with random values, in exactly the file DeepFace 0.0.103 reads.

DeepFace's own emotion weights cannot be downloaded here. Its PyTorch backend loads
`DEEPFACE_HOME/.deepface/weights/facial_expression_model_weights.pth` with
`torch.load(..., weights_only=True)` and `load_state_dict` (strict) into its
`EmotionModel`: five unpadded convolutions (1→64 5x5, 64→64 3x3 twice, 64→128 3x3
twice) and three linear layers (128→1024→1024→7). The state dict below is written
from that specification, not from DeepFace's class, so a change of DeepFace's
format makes the loading test fail instead of silently following it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

DEEPFACE_EMOTION_FILE = "facial_expression_model_weights.pth"

#: parameter name → shape, as DeepFace 0.0.103's pytorch EmotionModel names them
DEEPFACE_EMOTION_SHAPES: dict[str, tuple[int, ...]] = {
    "conv_1.weight": (64, 1, 5, 5),
    "conv_1.bias": (64,),
    "conv_2.weight": (64, 64, 3, 3),
    "conv_2.bias": (64,),
    "conv_3.weight": (64, 64, 3, 3),
    "conv_3.bias": (64,),
    "conv_4.weight": (128, 64, 3, 3),
    "conv_4.bias": (128,),
    "conv_5.weight": (128, 128, 3, 3),
    "conv_5.bias": (128,),
    "fc_1.weight": (1024, 128),
    "fc_1.bias": (1024,),
    "fc_2.weight": (1024, 1024),
    "fc_2.bias": (1024,),
    "fc_3.weight": (7, 1024),
    "fc_3.bias": (7,),
}


def deepface_weights_dir(home: Path) -> Path:
    return Path(home) / ".deepface" / "weights"


def write_random_deepface_emotion_weights(home: Path, seed: int = 0) -> Path:
    """Write random (He-initialised) emotion weights under `home` (a DEEPFACE_HOME)."""
    import torch

    rng = np.random.default_rng(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, shape in DEEPFACE_EMOTION_SHAPES.items():
        if name.endswith(".bias"):
            value = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        state[name] = torch.from_numpy(value)
    target = deepface_weights_dir(home) / DEEPFACE_EMOTION_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return target
