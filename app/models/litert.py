"""The LiteRT (TFLite) runtime: one way to open a uint8 image model and check its input.

Three adapters (MobileNet embedding, ImageNet tags, DeepLab person) run TFLite files with
`ai_edge_litert` on XNNPACK; each expects an RGB uint8 input of a fixed square size. Opening the
interpreter, allocating its tensors and refusing a file whose input is not that shape is the same
for all of them, so it lives here once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def open_uint8_image_model(file: Path, threads: int, size: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(interpreter, input details, output details) of a TFLite model taking uint8 1×size×size×3;
    ValueError naming the file when its input is anything else."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(file), num_threads=max(1, threads))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    if list(inp["shape"][1:]) != [size, size, 3] or inp["dtype"] != np.uint8:
        raise ValueError(f"{Path(file).name}: expected a uint8 1x{size}x{size}x3 input, got "
                         f"{inp['dtype'].__name__} {list(inp['shape'])}")
    return interpreter, inp, out
