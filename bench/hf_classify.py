"""The transformers baseline for `bit classify one.jpg --format jsonl`: an image-classification pipeline.

    HF_HOME=... HF_HUB_OFFLINE=1 python bench/hf_classify.py IMAGE
"""

import json
import sys

from transformers import pipeline

classifier = pipeline("image-classification", model="google/bit-50")
for prediction in classifier(sys.argv[1], top_k=5):
    print(json.dumps({"path": sys.argv[1], "label": prediction["label"], "score": prediction["score"]}))
