"""The model card (``README.md``) of a saved CXR-CLIP folder: how to load it with open_clip
alone, its data and the licence terms it inherits (IU report text: CC BY-NC-ND 4.0), the
model, the training and the held-out numbers. Research use only.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["model_card"]


def model_card(*, name: str, params: dict[str, int], model_cfg: dict[str, Any],
               data: dict[str, Any], training: dict[str, Any], metrics: dict[str, Any],
               pretrained: str | None = None) -> str:
    """The clip folder's ``README.md``: data and its licence terms, training, numbers, use."""
    origin = (f"fine-tuned from the local open_clip folder `{pretrained}`" if pretrained else
              "trained from scratch")
    lines = [
        f"# {name}: a chest X-ray CLIP (open_clip), research use only", "",
        f"A contrastive image-report model ({origin}) built by the biomed workbench "
        "(`biomed train-clip`). Load it with open_clip alone:", "",
        "```python", "import open_clip",
        "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:<this folder>')",
        "tokenizer = open_clip.get_tokenizer('local-dir:<this folder>')", "```", "",
        "Images: single-channel radiographs in [0, 1] (lungs dark), replicated to 3 channels and "
        "normalised with `preprocess_cfg` of `open_clip_config.json`. The text tower pools the "
        "end-of-text token (`pool_type: eos`).", "",
        "## Data", "",
        f"- {data.get('description', '')}",
        f"- training pairs: {data.get('train_items')}, evaluation items: "
        f"{data.get('eval_items')} (split `{data.get('eval_split')}`, by a stable hash of the "
        "report id: all renders of a report in one split)", "",
        "Where the data are phantoms (`data=phantom_iu`), the images are procedurally rendered "
        "chest radiographs, not patients, paired with real report text from the Indiana "
        "University / OpenI collection. That text is licensed CC BY-NC-ND 4.0, and this model "
        "inherits its terms: non-commercial use, attribution, no modified redistribution. "
        "Research use only; not for clinical use. Conclusions about real patients need real "
        "data.", "",
        "## Model", "",
        f"- parameters: {params['total']:,} (image tower {params['visual']:,}, text tower "
        f"{params['text']:,})",
        f"- embed_dim {model_cfg.get('embed_dim')}; vision_cfg "
        f"`{json.dumps(model_cfg.get('vision_cfg'))}`; text_cfg "
        f"`{json.dumps(model_cfg.get('text_cfg'))}`", "",
        "## Training", "",
        *[f"- {k}: {v}" for k, v in training.items()], "",
        "## Evaluation (held-out split)", "",
        *[f"- {k}: {v}" for k, v in metrics.items()], "",
    ]
    return "\n".join(lines)
