"""The transformers baseline for `bit embed`: BitImageProcessor + BitModel, batch 8, PIL decoding.

    python bench/hf_embed.py CHECKPOINT_DIR PHOTO_DIR OUT.npy

A straightforward loop, as a user would write it: sorted file names, PIL open + convert("RGB"),
the image processor on each batch, the model under torch.inference_mode(), pooled features saved.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BitImageProcessor, BitModel

checkpoint, folder, out = sys.argv[1:4]
processor = BitImageProcessor.from_pretrained(checkpoint)
model = BitModel.from_pretrained(checkpoint).eval()
paths = sorted(str(p) for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
rows = []
with torch.inference_mode():
    for start in range(0, len(paths), 8):
        images = [Image.open(p).convert("RGB") for p in paths[start : start + 8]]
        inputs = processor(images=images, return_tensors="pt")
        rows.append(model(**inputs).pooler_output.flatten(1).numpy())
np.save(out, np.concatenate(rows))
