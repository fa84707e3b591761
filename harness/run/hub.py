"""A trained run as a Hugging Face Hub model: ``save_pretrained``, ``push_to_hub``, ``from_pretrained``
(huggingface_hub's ``PyTorchModelHubMixin``).

    model = HubModel.from_run("3f2a...e1", results_dir)   # a run trained with save_weights=true
    model.save_pretrained("my-model")                      # model.safetensors + config.json (the run's config)
    model.push_to_hub("user/my-model")                     # needs a login and the network
    again = HubModel.from_pretrained("my-model")           # or "user/my-model": rebuilt from the config, strictly loaded

``HubModel`` wraps the run's ``SequenceModel`` (``.model``); its only constructor argument is the
resolved run config, which the mixin stores as ``config.json`` and passes back on loading, so the
model is rebuilt exactly as the run built it (``harness.run.weights.build_untrained``) before the
weights are loaded. ``forward``: token ids ``(batch, n)`` -> logits ``(batch, n, vocab)``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from harness.run.weights import build_untrained, load_trained


class HubModel(nn.Module, PyTorchModelHubMixin, library_name="mixbench",
               repo_url="https://github.com/mixbench/mixbench", tags=["mixbench", "sequence-mixer"]):
    def __init__(self, run_config: dict):
        super().__init__()
        self.run_config = run_config
        self.model, _ = build_untrained(run_config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    @classmethod
    def from_run(cls, source: str | Path, results_dir: Path | str | None = None) -> "HubModel":
        """The trained model of a run (an id, a record or a weights path: ``harness.run.weights.find_weights``)."""
        trained, cfg, _ = load_trained(source, results_dir)
        hub = cls(cfg)
        hub.model.load_state_dict(trained.state_dict(), strict=True)
        return hub.eval()
