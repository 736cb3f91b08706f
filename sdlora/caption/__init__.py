"""Captioning a folder of training images: a WD14-family tagger (ONNX) or a sentence captioner (transformers).

`caption_folder(root, captioner, options)` writes one caption file per image that has none (or, with
`overwrite`, replaces old ones and keeps each as `.txt.bak`); `propose_captions` computes captions without
writing them, for editors that show them first. `load_captioner(source)` picks the kind from the folder.
"""

from sdlora.caption.models import Captioner, load_captioner
from sdlora.caption.run import (
           CaptionOptions,
           CaptionResult,
           Proposal,
           apply_proposals,
           caption_folder,
           propose_captions,
)
from sdlora.caption.tagger import TaggerOptions

__all__ = ["CaptionOptions", "CaptionResult", "Captioner", "Proposal", "TaggerOptions", "apply_proposals",
           "caption_folder", "load_captioner", "propose_captions"]
